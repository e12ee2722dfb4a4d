"""Client assertions (RFC 7523): what verify accepts and each thing it refuses, with keys made
here; and a jwks_uri served on 127.0.0.1, its rotation and its refetch limit."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authsvc.auth import assertions
from authsvc.auth.assertions import (
    BadAssertion,
    Claims,
    ClientKeys,
    parse_jwks,
    unverified_client_id,
    verify,
)

CLIENT = "cl_0123456789abcdef"
AUD = "https://auth.example.com/auth/token"
AUDIENCES = (AUD, "https://auth.example.com")
NOW = 1_700_000_000.0


class Signer:
    """A client's key pair: its public JWK and assertions signed with its private key."""

    def __init__(self, private: Any, alg: str, kid: str | None) -> None:
        self.private, self.alg, self.kid = private, alg, kid

    @property
    def jwk(self) -> dict[str, Any]:
        found = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(self.private.public_key()))
        found["alg"] = self.alg
        if self.kid is not None:
            found["kid"] = self.kid
        return found

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, drop: tuple[str, ...] = (), headers: dict[str, Any] | None = None, **claims: Any) -> str:
        body = {"iss": CLIENT, "sub": CLIENT, "aud": AUD, "iat": int(NOW), "exp": int(NOW) + 60, "jti": "j-1"}
        body.update(claims)
        for name in drop:
            del body[name]
        head = {} if self.kid is None else {"kid": self.kid}
        head.update(headers or {})
        return jwt.encode(body, self.private, algorithm=self.alg, headers=head)


def ed(kid: str | None = "k-ed") -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid)


def p256(kid: str | None = "k-ec") -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", kid)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # slow: made once


def rsa_signer(alg: str = "RS256", kid: str | None = "k-rsa") -> Signer:
    return Signer(RSA_KEY, alg, kid)


async def check(token: str, signer: Signer, **overrides: Any) -> Claims:
    kwargs: dict[str, Any] = {
        "client_id": CLIENT,
        "keys": parse_jwks({"keys": [signer.jwk]}),
        "audiences": AUDIENCES,
        "now": NOW,
    }
    kwargs.update(overrides)
    return await verify(token, **kwargs)


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "make", [ed, p256, rsa_signer, lambda: rsa_signer("PS256")], ids=["ed25519", "p256", "rs256", "ps256"]
)
async def test_a_valid_assertion_for_each_key_type(make: Callable[[], Signer]) -> None:
    signer = make()
    claims = await check(signer.sign(jti="abc", exp=int(NOW) + 120), signer)
    assert claims == Claims(jti="abc", exp=int(NOW) + 120)


async def test_the_other_audience_and_a_list_of_audiences_pass() -> None:
    signer = ed()
    assert (await check(signer.sign(aud="https://auth.example.com"), signer)).jti == "j-1"
    assert (await check(signer.sign(aud=["elsewhere", AUD]), signer)).jti == "j-1"


async def test_without_a_kid_the_only_key_is_used() -> None:
    signer = ed(kid=None)
    assert (await check(signer.sign(), signer)).jti == "j-1"
    other = ed(kid=None)
    keys = parse_jwks({"keys": [signer.jwk, other.jwk]})
    with pytest.raises(BadAssertion, match="no key"):  # two keys and no kid: ambiguous
        await check(signer.sign(), signer, keys=keys)


async def test_a_float_exp_rounds_up_for_the_replay_record() -> None:
    signer = ed()
    assert (await check(signer.sign(exp=NOW + 30.2), signer)).exp == int(NOW) + 31


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(signature) if signature else ''}"


CLAIMS = {"iss": CLIENT, "sub": CLIENT, "aud": AUD, "exp": int(NOW) + 60, "jti": "j-1"}


async def test_alg_none_is_refused() -> None:
    signer = ed()
    for alg in ("none", "None", "NONE"):
        with pytest.raises(BadAssertion, match="algorithm"):
            await check(unsigned({"alg": alg, "kid": signer.kid}, CLAIMS), signer)


async def test_hs256_is_refused_even_signed_with_the_public_key_bytes() -> None:
    import hashlib
    import hmac

    signer = rsa_signer()
    header, payload = b64({"alg": "HS256", "typ": "JWT", "kid": signer.kid}), b64(CLAIMS)
    mac = hmac.new(signer.public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(BadAssertion, match="algorithm"):
        await check(f"{header}.{payload}.{b64(mac)}", signer)
    with pytest.raises(BadAssertion, match="algorithm"):
        await check(jwt.encode(CLAIMS, "a shared secret of thirty-two bytes", algorithm="HS256"), signer)


async def test_an_algorithm_other_than_the_keys_is_refused() -> None:
    signer = rsa_signer("RS256")
    with pytest.raises(BadAssertion, match="not the key's"):  # the same RSA key, PS256 chosen by the token
        await check(rsa_signer("PS256").sign(), signer)


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c"])
async def test_a_header_naming_its_own_key_is_refused(name: str) -> None:
    signer = ed()
    values = {"jwk": signer.jwk, "jku": "https://evil.example/jwks", "x5u": "https://evil.example/c", "x5c": ["MIIB"]}
    with pytest.raises(BadAssertion, match="header"):
        await check(signer.sign(headers={name: values[name]}), signer)


async def test_a_wrong_key_is_refused() -> None:
    registered, impostor = ed(kid="k-1"), ed(kid="k-1")
    with pytest.raises(BadAssertion, match="signature"):
        await check(impostor.sign(), registered)


async def test_an_unknown_kid_is_refused() -> None:
    with pytest.raises(BadAssertion, match="no key"):
        await check(ed(kid="k-2").sign(), ed(kid="k-1"))


async def test_a_tampered_payload_is_refused() -> None:
    signer = ed()
    header, _, signature = signer.sign().split(".")
    forged = f"{header}.{b64({**CLAIMS, 'sub': 'cl_other'})}.{signature}"
    with pytest.raises(BadAssertion, match="signature"):
        await check(forged, signer)


async def test_iss_other_than_the_client_is_refused() -> None:
    signer = ed()
    with pytest.raises(BadAssertion, match="InvalidIssuer"):
        await check(signer.sign(iss="cl_other"), signer)


async def test_sub_other_than_the_client_is_refused() -> None:
    signer = ed()
    with pytest.raises(BadAssertion, match="sub"):
        await check(signer.sign(sub="cl_other"), signer)


async def test_an_audience_not_ours_is_refused() -> None:
    signer = ed()
    with pytest.raises(BadAssertion, match="InvalidAudience"):
        await check(signer.sign(aud="https://other.example.com/token"), signer)


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "exp", "jti"])
async def test_a_missing_required_claim_is_refused(name: str) -> None:
    signer = ed()
    with pytest.raises(BadAssertion, match="MissingRequiredClaim"):
        await check(signer.sign(drop=(name,)), signer)


async def test_an_expired_assertion_is_refused_after_the_leeway() -> None:
    signer = ed()
    assert (await check(signer.sign(exp=int(NOW) - 5), signer)).jti == "j-1"  # within 10 s leeway
    with pytest.raises(BadAssertion, match="expired"):
        await check(signer.sign(exp=int(NOW) - 10), signer)


@pytest.mark.parametrize("exp", ["soon", True, None])
async def test_an_exp_that_is_not_a_number_is_refused(exp: Any) -> None:
    signer = ed()
    with pytest.raises(BadAssertion):
        await check(signer.sign(exp=exp), signer)


async def test_exp_more_than_the_max_lifetime_ahead_is_refused() -> None:
    signer = ed()
    assert (await check(signer.sign(exp=int(NOW) + 300), signer)).jti == "j-1"
    with pytest.raises(BadAssertion, match="too far"):
        await check(signer.sign(exp=int(NOW) + 3600), signer)
    with pytest.raises(BadAssertion, match="too far"):
        await check(signer.sign(exp=int(NOW) + 120), signer, max_lifetime=60)


@pytest.mark.parametrize("jti", ["", "x" * 201, 42])
async def test_a_bad_jti_is_refused(jti: Any) -> None:
    signer = ed()
    with pytest.raises(BadAssertion):
        await check(signer.sign(jti=jti), signer)
    assert (await check(signer.sign(jti="x" * 200), signer)).jti == "x" * 200


async def test_nbf_in_the_future_is_refused() -> None:
    signer = ed()
    assert (await check(signer.sign(nbf=int(NOW) + 5), signer)).jti == "j-1"
    with pytest.raises(BadAssertion, match="nbf"):
        await check(signer.sign(nbf=int(NOW) + 60), signer)


async def test_iat_far_in_the_future_is_refused() -> None:
    signer = ed()
    with pytest.raises(BadAssertion, match="iat"):
        await check(signer.sign(iat=int(NOW) + 60), signer)
    with pytest.raises(BadAssertion, match="iat"):
        await check(signer.sign(iat="yesterday"), signer)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "é.é.é", "x" * 10_000, None])
async def test_junk_is_refused_without_an_exception_of_another_kind(token: Any) -> None:
    with pytest.raises(BadAssertion):
        await check(token, ed())


def test_the_unverified_client_id_is_iss_when_it_equals_sub() -> None:
    signer = ed()
    assert unverified_client_id(signer.sign()) == CLIENT
    assert unverified_client_id(signer.sign(sub="cl_other")) is None
    assert unverified_client_id(unsigned({"alg": "EdDSA"}, {**CLAIMS, "iss": ["a"], "sub": ["a"]})) is None
    assert unverified_client_id(signer.sign(iss="x" * 101, sub="x" * 101)) is None
    assert unverified_client_id(unsigned({"alg": "none"}, CLAIMS)) == CLIENT  # not verified: only a lookup
    for junk in ("", "a.b.c", "é", "x" * 10_000):
        assert unverified_client_id(junk) is None


def test_parse_jwks_keeps_public_asymmetric_signing_keys_only() -> None:
    signer = ed()
    private = json.loads(jwt.get_algorithm_by_name("EdDSA").to_jwk(signer.private))
    secret = {"kty": "oct", "k": b64(b"k" * 32), "alg": "HS256"}
    encrypting = {**p256().jwk, "use": "enc"}
    document = {"keys": [signer.jwk, private, secret, encrypting, "junk", {"kty": "RSA"}]}
    assert [key.key_id for key in parse_jwks(document)] == ["k-ed"]
    assert parse_jwks({"keys": "no"}) == [] and parse_jwks([1]) == []
    for bad in (private, secret, encrypting, {"kty": "RSA"}, {**signer.jwk, "kid": 7}):
        with pytest.raises(ValueError):
            parse_jwks({"keys": [bad]}, strict=True)
    with pytest.raises(ValueError):
        parse_jwks({"keys": []}, strict=True)
    assert len(parse_jwks({"keys": [signer.jwk]}, strict=True)) == 1


async def test_a_stored_jwks_resolver() -> None:
    signer = p256()
    resolver = ClientKeys().resolver(jwks={"keys": [signer.jwk]})
    assert (await check(signer.sign(), signer, keys=resolver)).jti == "j-1"
    with pytest.raises(ValueError):
        ClientKeys().resolver()


class JwksServer:
    """A client's jwks_uri: the keys it serves now, and how often it was asked."""

    def __init__(self, *signers: Signer) -> None:
        self.signers = list(signers)
        self.hits = 0
        self.failing = False

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response({"keys": [signer.jwk for signer in self.signers]})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def jwks(aiohttp_server: Any) -> tuple[JwksServer, str]:
    served = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks.json", served.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return served, str(server.make_url("/jwks.json"))


async def test_a_jwks_uri_is_fetched_once_and_cached(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    signer = ed(kid="k-1")
    served.signers = [signer]
    clock = Clock()
    keys = ClientKeys(clock=clock)
    resolver = keys.resolver(jwks_uri=url)
    for _ in range(3):
        assert (await check(signer.sign(), signer, keys=resolver)).jti == "j-1"
    assert served.hits == 1
    clock.now += 301  # past the lifespan: fetched again
    assert (await check(signer.sign(), signer, keys=resolver)).jti == "j-1"
    assert served.hits == 2


async def test_a_rotation_is_found_by_one_refetch_and_a_flood_of_kids_does_not_refetch(
    jwks: tuple[JwksServer, str],
) -> None:
    served, url = jwks
    old, new = ed(kid="k-old"), rsa_signer(kid="k-new")
    served.signers = [old]
    clock = Clock()
    resolver = ClientKeys(clock=clock).resolver(jwks_uri=url)
    assert (await check(old.sign(), old, keys=resolver)).jti == "j-1"
    assert served.hits == 1

    clock.now += 31  # the client rotates; its next assertion names the new kid
    served.signers = [old, new]
    assert (await check(new.sign(), new, keys=resolver)).jti == "j-1"
    assert served.hits == 2

    for number in range(50):  # made-up kids within the interval: no request each
        with pytest.raises(BadAssertion, match="no key"):
            await check(ed(kid=f"k-{number}").sign(), new, keys=resolver)
    assert served.hits == 2
    clock.now += 31
    with pytest.raises(BadAssertion, match="no key"):
        await check(ed(kid="k-late").sign(), new, keys=resolver)
    assert served.hits == 3  # one more after the interval


async def test_concurrent_assertions_with_a_new_kid_share_one_fetch(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    old, new = ed(kid="k-old"), p256(kid="k-new")
    served.signers = [old]
    clock = Clock()
    resolver = ClientKeys(clock=clock).resolver(jwks_uri=url)
    assert (await check(old.sign(), old, keys=resolver)).jti == "j-1"
    clock.now += 31
    served.signers = [old, new]
    results = await asyncio.gather(*(check(new.sign(), new, keys=resolver) for _ in range(10)))
    assert [claims.jti for claims in results] == ["j-1"] * 10  # none saw the keys from before
    assert served.hits == 2


async def test_a_failed_fetch_keeps_the_keys_and_is_not_retried_at_once(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    signer = ed(kid="k-1")
    served.signers = [signer]
    clock = Clock()
    resolver = ClientKeys(clock=clock).resolver(jwks_uri=url)
    assert (await check(signer.sign(), signer, keys=resolver)).jti == "j-1"
    served.failing = True
    clock.now += 301
    for _ in range(3):
        assert (await check(signer.sign(), signer, keys=resolver)).jti == "j-1"
    assert served.hits == 2


async def test_an_unreachable_or_unusable_jwks_uri_refuses_the_assertion(unused_tcp_port: int) -> None:
    signer = ed()
    resolver = ClientKeys().resolver(jwks_uri=f"http://127.0.0.1:{unused_tcp_port}/jwks.json")
    with pytest.raises(BadAssertion, match="no key"):
        await check(signer.sign(), signer, keys=resolver)
    with pytest.raises(BadAssertion, match="jwks_uri"):
        await check(signer.sign(), signer, keys=ClientKeys().resolver(jwks_uri="file:///etc/passwd"))


async def test_junk_never_reaches_the_jwks_uri(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    resolver = ClientKeys().resolver(jwks_uri=url)
    with pytest.raises(BadAssertion):
        await check(unsigned({"alg": "none", "kid": "x"}, CLAIMS), ed(), keys=resolver)
    assert served.hits == 0


def test_the_module_accepts_only_asymmetric_algorithms() -> None:
    assert not any(alg.startswith("HS") or alg.lower() == "none" for alg in assertions.ASYMMETRIC_ALGORITHMS)
