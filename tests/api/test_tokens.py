"""Access tokens against authsvc and a second service using the shipped verifier: attacks, JWKS, rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from helpers import PASSWORD, bearer, login, signup

from authsvc.app import create_app
from authsvc.appkeys import TOKENS
from authsvc.auth.keyring import KeyFile, KeyRing, SigningKey
from authsvc.auth.tokens import TokenService
from authsvc.errors import InvalidToken
from authsvc.settings import Settings
from authsvc.verifier import CLAIMS, TokenVerifier

OWNER = "owner@example.com"
JWKS_PATH = "/.well-known/jwks.json"
SERVICE_ID = "orders"
SERVICE_SECRET = secrets.token_urlsafe(48)

# Someone else's key: an attacker's, or another deployment's. Never published by our authsvc.
ATTACKER_KEY = Ed25519PrivateKey.generate()
ATTACKER_KID = "20240101-0badc0de"
ATTACKER_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": base64.urlsafe_b64encode(ATTACKER_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    .rstrip(b"=")
    .decode(),
    "kid": ATTACKER_KID,
    "alg": "EdDSA",
    "use": "sig",
}


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    # A service credential, so introspection can be asked what a local verifier cannot know.
    return base_settings.replace(introspection_clients=((SERVICE_ID, SERVICE_SECRET),))


# --- building tokens by hand: every byte of the header and payload is ours to choose ---

Signer = Callable[[bytes], bytes]
OURS = object()  # sign with authsvc's own active key


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(header: Any, claims: Any, sign: Signer | None) -> str:
    """A JWS in compact form; no signer gives an empty signature (what alg none carries)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = sign(signing_input.encode("ascii")) if sign else b""
    return signing_input + "." + b64url(signature)


def hmac_signer(secret: bytes, alg: str = "HS256") -> Signer:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return lambda data: hmac.new(secret, data, digest).digest()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


# --- the two services ---


async def start_verifier(aiohttp_client: Any, authsvc: TestClient, settings: Settings, **options: Any):
    """A second aiohttp service protected by the shipped verifier, trusting authsvc's JWKS."""
    jwks_url = str(authsvc.make_url(JWKS_PATH))
    verifier = TokenVerifier(jwks_url, issuer=settings.issuer, audience=settings.audience, **options)
    app = web.Application(middlewares=[verifier.middleware])
    app.cleanup_ctx.append(verifier.ctx)

    async def claims(request: web.Request) -> web.Response:
        return web.json_response(request[CLAIMS])

    app.router.add_get("/claims", claims)
    return await aiohttp_client(app), verifier


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


async def assert_refused(authsvc: TestClient, service: TestClient, token: str) -> None:
    resp = await authsvc.get("/users/me", headers=bearer(token))
    await assert_error(resp, 401, "invalid_token")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    resp = await service.get("/claims", headers=bearer(token))
    await assert_error(resp, 401, "invalid_token")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def assert_accepted(authsvc: TestClient, service: TestClient, token: str) -> dict[str, Any]:
    resp = await authsvc.get("/users/me", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    resp = await service.get("/claims", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def introspect(authsvc: TestClient, token: str) -> dict[str, Any]:
    credential = base64.b64encode(f"{SERVICE_ID}:{SERVICE_SECRET}".encode()).decode()
    headers = {"Authorization": f"Basic {credential}"}
    resp = await authsvc.post("/auth/introspect", data={"token": token}, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def published_kids(authsvc: TestClient) -> set[str]:
    resp = await authsvc.get(JWKS_PATH)
    assert resp.status == 200
    return {key["kid"] for key in (await resp.json())["keys"]}


@dataclass
class World:
    """authsvc, a verifier service in front of it, and one user's real token pair."""

    authsvc: TestClient
    service: TestClient
    verifier: TokenVerifier
    token: str
    refresh_token: str
    key: SigningKey  # authsvc's active signing key
    jwk: dict[str, Any]  # its public JWK as published
    settings: Settings

    @property
    def header(self) -> dict[str, Any]:
        return unverified(self.token)[0]

    @property
    def claims(self) -> dict[str, Any]:
        return unverified(self.token)[1]

    def resign(
        self,
        *,
        header: dict[str, Any] | None = None,
        drop_header: tuple[str, ...] = (),
        claims: dict[str, Any] | None = None,
        drop_claims: tuple[str, ...] = (),
        sign: Any = OURS,
    ) -> str:
        """The real token's header and claims with some changed, signed as chosen."""
        h = {**self.header, **(header or {})}
        c = {**self.claims, **(claims or {})}
        for name in drop_header:
            del h[name]
        for name in drop_claims:
            del c[name]
        return compact(h, c, self.key.private.sign if sign is OURS else sign)


@pytest.fixture
async def world(client: TestClient, aiohttp_client: Any, settings: Settings) -> World:
    await signup(client, OWNER)
    resp = await client.post("/auth", json={"username": OWNER, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    pair = await resp.json()
    service, verifier = await start_verifier(aiohttp_client, client, settings)
    kid = jwt.get_unverified_header(pair["access_token"])["kid"]
    jwks = await (await client.get(JWKS_PATH)).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = client.app[TOKENS].keys.active
    return World(client, service, verifier, pair["access_token"], pair["refresh_token"], key, jwk, settings)


# --- the happy path, and the controls the attacks differ from ---


async def test_the_verifier_service_accepts_a_token_from_post_auth_with_its_claims(world, db):
    claims = await assert_accepted(world.authsvc, world.service, world.token)
    assert claims == world.claims
    user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", OWNER)
    session_id = await db.fetchval("SELECT id FROM sessions WHERE user_id = $1", user_id)
    assert claims["sub"] == str(user_id)
    assert claims["sid"] == str(session_id)
    assert claims["iss"] == world.settings.issuer and claims["aud"] == world.settings.audience
    assert world.header == {"alg": "EdDSA", "typ": "at+jwt", "kid": world.key.kid}
    assert world.verifier.keys.fetches == 1


async def test_a_token_rebuilt_by_hand_unchanged_is_accepted(world):
    # Guards the builders: every attack below differs from this token in one thing.
    token = world.resign()
    assert await assert_accepted(world.authsvc, world.service, token) == world.claims


async def test_a_token_expired_within_the_leeway_is_still_accepted(world):
    now = int(time.time())
    token = world.resign(claims={"iat": now - 900, "exp": now - 3})
    await assert_accepted(world.authsvc, world.service, token)


# --- every attack fails at authsvc and at the verifier service ---


def _public_key_secrets() -> dict[str, Callable[[World], bytes]]:
    """What an attacker can take from the published key and try as an HMAC secret."""
    return {
        "raw": lambda w: w.key.public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        "pem": lambda w: w.key.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "pem_stripped": lambda w: w.key.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).strip(),
        "der": lambda w: w.key.public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        "openssh": lambda w: w.key.public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH),
        "jwk_x": lambda w: w.jwk["x"].encode(),
        "jwk_json": lambda w: json.dumps(w.jwk).encode(),
    }


def _flip_signature_bit(w: World) -> str:
    header, payload, signature = w.token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[10] ^= 0x01
    return ".".join([header, payload, b64url(bytes(raw))])


def _none_keeping_the_signature(w: World) -> str:
    _, payload, signature = w.token.split(".")
    return ".".join([b64url(json.dumps({**w.header, "alg": "none"}).encode()), payload, signature])


def _tamper_payload(w: World, **changes: Any) -> str:
    # The original signature kept over a changed payload.
    header, _, signature = w.token.split(".")
    return ".".join([header, b64url(json.dumps({**w.claims, **changes}).encode()), signature])


def _past() -> int:
    # Beyond both leeways (authsvc's setting and the verifier's default of 10 s).
    return int(time.time()) - 10 - 60


ATTACKS: dict[str, Callable[[World], str]] = {
    **{f"alg_{v}": (lambda w, v=v: w.resign(header={"alg": v}, sign=None)) for v in ("none", "None", "NONE", "nOnE")},
    "alg_none_keeping_the_real_signature": _none_keeping_the_signature,
    **{
        f"hs256_signed_with_public_key_{name}": (
            lambda w, secret=secret: w.resign(header={"alg": "HS256"}, sign=hmac_signer(secret(w)))
        )
        for name, secret in _public_key_secrets().items()
    },
    "hs256_signed_with_public_key_without_kid": lambda w: w.resign(
        header={"alg": "HS256"}, drop_header=("kid",), sign=hmac_signer(_public_key_secrets()["raw"](w))
    ),
    "hs512_signed_with_public_key": lambda w: w.resign(
        header={"alg": "HS512"}, sign=hmac_signer(w.jwk["x"].encode(), "HS512")
    ),
    "flipped_signature_bit": _flip_signature_bit,
    "signature_removed": lambda w: w.token.rsplit(".", 1)[0] + ".",
    "tampered_payload_sub": lambda w: _tamper_payload(w, sub=str(int(w.claims["sub"]) + 1)),
    "tampered_payload_exp": lambda w: _tamper_payload(w, exp=w.claims["exp"] + 86_400),
    "expired_beyond_leeway": lambda w: w.resign(claims={"iat": _past() - 900, "exp": _past()}),
    "nbf_in_the_future": lambda w: w.resign(claims={"nbf": int(time.time()) + 3600}),
    "missing_exp": lambda w: w.resign(drop_claims=("exp",)),
    "wrong_aud": lambda w: w.resign(claims={"aud": "another-service"}),
    "aud_list_without_us": lambda w: w.resign(claims={"aud": ["another-service", "a-third"]}),
    "missing_aud": lambda w: w.resign(drop_claims=("aud",)),
    "wrong_iss": lambda w: w.resign(claims={"iss": "https://evil.example"}),
    "missing_iss": lambda w: w.resign(drop_claims=("iss",)),
    "typ_missing": lambda w: w.resign(drop_header=("typ",)),
    "id_like_token_typ_jwt": lambda w: w.resign(
        header={"typ": "JWT"}, claims={"nonce": "n-0S6_WzA2Mj", "auth_time": w.claims["iat"]}
    ),
    "refresh_token_as_access_token": lambda w: w.refresh_token,
    "unknown_kid": lambda w: w.resign(header={"kid": "20240101-00000000"}),
    "kid_path_traversal": lambda w: w.resign(header={"kid": "../../etc/passwd"}),
    "kid_sql_like": lambda w: w.resign(header={"kid": "' OR '1'='1"}),
    "kid_overlong": lambda w: w.resign(header={"kid": w.key.kid + "x" * 200}),
    "kid_not_a_string": lambda w: w.resign(header={"kid": [w.key.kid]}),
    "kid_missing": lambda w: w.resign(drop_header=("kid",)),
    "kid_of_a_key_not_ours": lambda w: w.resign(header={"kid": ATTACKER_KID}, sign=ATTACKER_KEY.sign),
    "our_kid_signed_by_a_key_not_ours": lambda w: w.resign(sign=ATTACKER_KEY.sign),
    "jku_header_with_attacker_key": lambda w: w.resign(
        header={"kid": ATTACKER_KID, "jku": "https://evil.example/jwks.json"}, sign=ATTACKER_KEY.sign
    ),
    "jku_header_even_with_our_key": lambda w: w.resign(header={"jku": "https://evil.example/jwks.json"}),
    "embedded_jwk_attacker_key_our_kid": lambda w: w.resign(header={"jwk": ATTACKER_JWK}, sign=ATTACKER_KEY.sign),
    "embedded_jwk_attacker_key_its_kid": lambda w: w.resign(
        header={"kid": ATTACKER_KID, "jwk": ATTACKER_JWK}, sign=ATTACKER_KEY.sign
    ),
    "embedded_jwk_attacker_key_no_kid": lambda w: w.resign(
        header={"jwk": ATTACKER_JWK}, drop_header=("kid",), sign=ATTACKER_KEY.sign
    ),
    "embedded_jwk_even_with_our_key": lambda w: w.resign(header={"jwk": w.jwk}),
    "x5u_header_with_attacker_key": lambda w: w.resign(
        header={"kid": ATTACKER_KID, "x5u": "https://evil.example/cert.pem"}, sign=ATTACKER_KEY.sign
    ),
    "header_not_an_object": lambda w: compact(["EdDSA"], w.claims, w.key.private.sign),
    "five_segments": lambda w: w.token + ".e30.e30",
}


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
async def test_attack_fails_at_authsvc_and_at_the_verifier(world, attack):
    await assert_refused(world.authsvc, world.service, attack(world))
    # The real token still works: the refusals were about the forgery, not a broken set-up.
    await assert_accepted(world.authsvc, world.service, world.token)


async def test_jku_pointing_at_a_served_key_set_is_never_fetched(world, aiohttp_client):
    # The URL really serves the attacker's key: a verifier that followed jku would accept.
    fetched: list[str] = []

    async def evil_jwks(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.json_response({"keys": [ATTACKER_JWK]})

    evil = web.Application()
    evil.router.add_get("/jwks.json", evil_jwks)
    evil_url = str((await aiohttp_client(evil)).make_url("/jwks.json"))
    for kid in (ATTACKER_KID, world.key.kid):
        token = world.resign(header={"kid": kid, "jku": evil_url}, sign=ATTACKER_KEY.sign)
        await assert_refused(world.authsvc, world.service, token)
    assert fetched == []


# --- HMAC: HS256 mode and algorithm confusion between the modes ---


async def test_hs512_fails_where_hs256_is_expected(world, make_client, settings):
    hs = await make_client(token_algorithm="HS256")
    header, claims = unverified(await login(hs, OWNER))
    assert header["alg"] == "HS256"
    secret = settings.token_secret.encode()
    # Control: signed by hand with the right secret and HS256, it works.
    good = compact(header, claims, hmac_signer(secret, "HS256"))
    assert (await hs.get("/users/me", headers=bearer(good))).status == 200
    hs512 = compact({**header, "alg": "HS512"}, claims, hmac_signer(secret, "HS512"))
    await assert_refused(hs, world.service, hs512)


async def test_an_hs256_token_fails_at_the_eddsa_service_and_at_the_verifier(world, make_client, settings):
    hs = await make_client(token_algorithm="HS256")
    hs_token = await login(hs, OWNER)
    await assert_refused(world.authsvc, world.service, hs_token)
    # The same, carrying the EdDSA key's kid.
    header, claims = unverified(hs_token)
    relabelled = compact({**header, "kid": world.key.kid}, claims, hmac_signer(settings.token_secret.encode()))
    await assert_refused(world.authsvc, world.service, relabelled)


async def test_a_verifier_pointed_at_an_hs256_authsvc_trusts_nothing(make_client, aiohttp_client, settings):
    hs = await make_client(token_algorithm="HS256")
    await signup(hs, OWNER)
    token = await login(hs, OWNER)
    service, _ = await start_verifier(aiohttp_client, hs, settings)
    resp = await service.get("/claims", headers=bearer(token))
    await assert_error(resp, 401, "invalid_token")


# --- what a local verifier cannot know: revocation ---


async def test_a_deleted_users_token_fails_at_authsvc_but_the_verifier_accepts_it_until_expiry(world, db):
    assert (await introspect(world.authsvc, world.token))["active"] is True
    resp = await world.authsvc.delete("/users/me", headers=bearer(world.token))
    assert resp.status == 204
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    await assert_error(await world.authsvc.get("/users/me", headers=bearer(world.token)), 401, "invalid_token")
    # Documented: the verifier checks signature and claims only, so it accepts until exp...
    resp = await world.service.get("/claims", headers=bearer(world.token))
    assert resp.status == 200
    assert (await resp.json())["exp"] > time.time()
    # ...and introspection is how a service learns of the revocation at once.
    assert await introspect(world.authsvc, world.token) == {"active": False}


@pytest.mark.parametrize("scope", ["", "?scope=all"])
async def test_a_logged_out_sessions_token_fails_at_authsvc_but_the_verifier_accepts_it_until_expiry(world, scope):
    assert (await introspect(world.authsvc, world.token))["active"] is True
    resp = await world.authsvc.post("/auth/logout" + scope, headers=bearer(world.token))
    assert resp.status == 204
    await assert_error(await world.authsvc.get("/users/me", headers=bearer(world.token)), 401, "invalid_token")
    resp = await world.service.get("/claims", headers=bearer(world.token))
    assert resp.status == 200
    assert (await resp.json())["exp"] > time.time()
    assert await introspect(world.authsvc, world.token) == {"active": False}


# --- tokens travel only in the Authorization header ---


async def test_a_token_in_the_query_string_is_refused(world):
    resp = await world.authsvc.get("/users/me", params={"access_token": world.token})
    await assert_error(resp, 400, "invalid_request")
    # Even beside a valid header: a token in a URL ends up in logs, so the request is refused.
    resp = await world.authsvc.get("/users/me", params={"access_token": world.token}, headers=bearer(world.token))
    await assert_error(resp, 400, "invalid_request")
    # The verifier never looks at the URL: without the header there is no token at all.
    resp = await world.service.get("/claims", params={"access_token": world.token})
    await assert_error(resp, 401, "unauthorized")


async def test_a_logout_with_the_token_in_the_url_or_body_ends_nothing(world):
    resp = await world.authsvc.post("/auth/logout", params={"access_token": world.token}, headers=bearer(world.token))
    await assert_error(resp, 400, "invalid_request")
    resp = await world.authsvc.post("/auth/logout", data={"access_token": world.token})
    await assert_error(resp, 401, "unauthorized")
    assert (await world.authsvc.get("/users/me", headers=bearer(world.token))).status == 200


# --- the verifier's own answers ---


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer    "}, {"Authorization": "Basic b3JkZXJzOnNlY3JldA=="}],
    ids=["no_header", "bearer_without_token", "bearer_blank", "basic_scheme"],
)
async def test_the_verifier_answers_401_unauthorized_in_json_without_a_token(world, headers):
    resp = await world.service.get("/claims", headers=headers)
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert world.verifier.keys.fetches == 0  # nothing to verify, nothing fetched


# --- JWKS and metadata ---


async def test_the_jwks_publishes_the_active_public_key_and_nothing_private(world):
    resp = await world.authsvc.get(JWKS_PATH)
    assert resp.status == 200
    cache_control = resp.headers["Cache-Control"]
    assert "no-store" not in cache_control
    max_age = [int(part.split("=")[1]) for part in cache_control.split(", ") if part.startswith("max-age=")]
    assert max_age and max_age[0] > 0
    keys = (await resp.json())["keys"]
    assert [key["kid"] for key in keys] == [world.header["kid"]]
    key = keys[0]
    assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}  # no "d", no "k"
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert key["x"] == b64url(world.key.public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    # The published key alone verifies the token.
    claims = jwt.decode(
        world.token,
        jwt.PyJWK(key).key,
        algorithms=["EdDSA"],
        audience=world.settings.audience,
        issuer=world.settings.issuer,
    )
    assert claims == world.claims


async def test_in_hs256_mode_the_key_set_is_empty(make_client):
    hs = await make_client(token_algorithm="HS256")
    resp = await hs.get(JWKS_PATH)
    assert resp.status == 200
    assert await resp.json() == {"keys": []}


async def test_the_metadata_document_names_issuer_jwks_and_token_endpoint(client, settings):
    resp = await client.get("/.well-known/oauth-authorization-server")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["issuer"] == settings.issuer
    assert doc["jwks_uri"] == settings.public_url + JWKS_PATH
    assert doc["token_endpoint"] == settings.public_url + "/auth/token"
    assert doc["access_token_signing_alg_values_supported"] == ["EdDSA"]


# --- key rotation ---


def new_key_file(path: Path) -> str:
    doc = KeyFile.load(path)
    kid = doc.generate("EdDSA", activate=True)
    doc.save()
    return kid


async def reload_keys(app: web.Application, path: Path) -> None:
    if not await app[TOKENS].keys.reload_if_changed():
        # The file system's clock did not tick between the two saves.
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert await app[TOKENS].keys.reload_if_changed()


async def rotate(app: web.Application, path: Path) -> str:
    """`authsvc keys rotate`, then the replica's reload."""
    kid = new_key_file(path)
    await reload_keys(app, path)
    return kid


def retire_long_ago(path: Path, kid: str, settings: Settings) -> None:
    doc = KeyFile.load(path)
    ago = datetime.now(UTC) - timedelta(seconds=settings.access_token_ttl + settings.token_leeway + 60)
    [entry] = [e for e in doc.entries if e["kid"] == kid]
    entry["retired_at"] = ago.isoformat()
    doc.save()


@pytest.fixture
async def rotating(tmp_path, make_client):
    """authsvc on a key file of its own, with a signed-up user."""
    path = tmp_path / "signing-keys.json"
    old_kid = new_key_file(path)
    authsvc = await make_client(signing_keys_file=path)
    await signup(authsvc, OWNER)
    return authsvc, path, old_kid


async def test_tokens_of_the_old_and_new_key_both_work_after_a_rotation(rotating, aiohttp_client, settings):
    authsvc, path, old_kid = rotating
    # No floor here (it has a test of its own). With the default 30 s floor, a verifier that fetched
    # less than 30 s before `keys rotate` refuses new tokens until the floor passes; the
    # two-step procedure of docs/operations.md (Keys: generate, wait, activate) avoids that window.
    service, verifier = await start_verifier(aiohttp_client, authsvc, settings, min_refresh_interval=0)
    token_a = await login(authsvc, OWNER)
    assert unverified(token_a)[0]["kid"] == old_kid
    await assert_accepted(authsvc, service, token_a)
    assert verifier.keys.fetches == 1

    new_kid = await rotate(authsvc.app, path)
    token_b = await login(authsvc, OWNER)
    assert unverified(token_b)[0]["kid"] == new_kid != old_kid
    await assert_accepted(authsvc, service, token_b)
    assert verifier.keys.fetches == 2  # the unknown kid made it fetch the key set again
    await assert_accepted(authsvc, service, token_a)
    assert await published_kids(authsvc) == {old_kid, new_kid}


async def test_once_the_old_key_retired_longer_than_a_token_lives_its_tokens_fail(rotating, aiohttp_client, settings):
    authsvc, path, old_kid = rotating
    token_a = await login(authsvc, OWNER)
    new_kid = await rotate(authsvc.app, path)
    token_b = await login(authsvc, OWNER)

    retire_long_ago(path, old_kid, settings)
    await reload_keys(authsvc.app, path)
    assert await published_kids(authsvc) == {new_kid}
    # A verifier that fetches the key set now (a fresh one) no longer has the old key.
    service, _ = await start_verifier(aiohttp_client, authsvc, settings)
    await assert_refused(authsvc, service, token_a)
    await assert_accepted(authsvc, service, token_b)


async def test_a_token_signed_by_a_key_that_is_not_published_fails(rotating, aiohttp_client, settings, tmp_path):
    authsvc, path, old_kid = rotating
    await rotate(authsvc.app, path)
    service, _ = await start_verifier(aiohttp_client, authsvc, settings, min_refresh_interval=0)
    token = await login(authsvc, OWNER)
    header, claims = unverified(token)
    # A real authsvc key, but from another deployment's key file, never published here.
    elsewhere = tmp_path / "elsewhere" / "signing-keys.json"
    foreign_kid = new_key_file(elsewhere)
    foreign = KeyFile.load(elsewhere).entries[0]
    foreign_key = load_pem_private_key(foreign["private_key"].encode(), password=None)
    for kid in (foreign_kid, header["kid"], old_kid):
        await assert_refused(authsvc, service, compact({**header, "kid": kid}, claims, foreign_key.sign))
    await assert_accepted(authsvc, service, token)


# --- the refresh floor ---


async def test_a_flood_of_made_up_kids_fetches_the_key_set_at_most_once_more(aiohttp_client, settings):
    app = create_app(settings)
    jwks_requests = 0

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        nonlocal jwks_requests
        jwks_requests += request.path == JWKS_PATH

    app.on_response_prepare.append(count)  # observes, changes nothing
    authsvc = await aiohttp_client(app)
    await signup(authsvc, OWNER)
    token = await login(authsvc, OWNER)
    service, verifier = await start_verifier(aiohttp_client, authsvc, settings, min_refresh_interval=30)
    await assert_accepted(authsvc, service, token)
    initial = verifier.keys.fetches
    assert initial == 1

    header, claims = unverified(token)
    sign = authsvc.app[TOKENS].keys.active.private.sign
    floods = [compact({**header, "kid": f"made-up-{i}"}, claims, sign) for i in range(50)]
    responses = await asyncio.gather(*(service.get("/claims", headers=bearer(t)) for t in floods))
    for resp in responses:
        await assert_error(resp, 401, "invalid_token")
    assert verifier.keys.fetches <= initial + 1
    assert jwks_requests == verifier.keys.fetches
    # The cached key set still serves real tokens.
    await assert_accepted(authsvc, service, token)


def test_a_remembered_token_still_expires(keys_file, time_machine):
    """Verified tokens are remembered to skip the signature check, never past their expiry."""
    time_machine.move_to(datetime(2030, 1, 1, tzinfo=UTC), tick=False)
    service = TokenService(KeyRing.from_file(keys_file, timedelta(0)), "authsvc", "authsvc", ttl=1, leeway=0)
    token = service.issue(1, uuid.uuid4(), frozenset({"profile"}))
    assert service.verify(token).user_id == 1
    assert service.verify(token).user_id == 1  # from memory
    time_machine.shift(1.1)
    with pytest.raises(InvalidToken):
        service.verify(token)
