"""The OpenAPI document: every route described, every description a route, served as built."""

from __future__ import annotations

import re

import schemathesis
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError, validate

from authsvc.app import create_app
from authsvc.appkeys import SETTINGS
from authsvc.auth.ids import MAX_ID
from authsvc.http import openapi
from authsvc.http.schemas import MAX_OFFSET, SignupSchema

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def test_every_route_has_a_description(app: web.Application) -> None:
    missing = openapi.routes_of(app) - set(openapi.OPERATIONS)
    assert not missing, f"routes without a row in authsvc/openapi.py OPERATIONS: {sorted(missing)}"


def test_every_description_is_a_route(app: web.Application) -> None:
    stale = set(openapi.OPERATIONS) - openapi.routes_of(app)
    assert not stale, f"rows in OPERATIONS for routes the app does not have: {sorted(stale)}"


def test_document_names_exactly_the_routes(app: web.Application) -> None:
    doc = openapi.build(openapi.routes_of(app), "http://127.0.0.1:8080")
    assert documented(doc) == openapi.routes_of(app)


def test_cors_preflights_are_not_operations(settings) -> None:
    app = create_app(settings.replace(cors_origins=("https://app.example",)))
    assert any(route.method == "OPTIONS" for route in app.router.routes())
    assert openapi.routes_of(app) == set(openapi.OPERATIONS)


def test_document_is_valid_openapi(app: web.Application) -> None:
    doc = openapi.build(openapi.routes_of(app), "http://127.0.0.1:8080")
    assert doc["openapi"].startswith("3.1")
    # Schemathesis refuses a document that breaks the OpenAPI 3.1 meta-schema.
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert len(labels) == len(openapi.OPERATIONS)


def test_bearer_scheme_on_protected_operations_only(app: web.Application) -> None:
    doc = openapi.build(openapi.routes_of(app), "http://127.0.0.1:8080")
    assert doc["components"]["securitySchemes"][openapi.BEARER] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "An access token.",
    }
    for route in app.router.routes():
        if route.method in openapi.IMPLICIT_METHODS:
            continue
        op = doc["paths"][route.resource.canonical][route.method.lower()]
        if getattr(route.handler, "authsvc_public", False):
            # /auth/token: client_secret_basic is one way a client may authenticate, so optional.
            assert op["security"] in ([], [{openapi.BASIC: []}], [{}, {openapi.CLIENT_BASIC: []}]), route
            assert "401" not in op["responses"] or route.resource.canonical in ("/auth", "/auth/introspect", "/auth/token")
        else:
            assert op["security"] == [{openapi.BEARER: []}], route
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}


def test_request_schemas_are_the_validating_ones(app: web.Application) -> None:
    """The documented bodies come from the very schemas the views load."""
    from authsvc.http.views import auth, todos, users

    doc = openapi.build(openapi.routes_of(app), "http://127.0.0.1:8080")
    bodies = {
        ("POST", "/users"): users.signup_schema,
        ("PATCH", "/users/me"): users.patch_schema,
        ("POST", "/users/me/password"): users.password_schema,
        ("POST", "/auth/refresh"): auth.refresh_schema,
        ("POST", "/todos"): todos.create_schema,
        ("PUT", "/todos/{id}"): todos.put_schema,
        ("PATCH", "/todos/{id}"): todos.patch_schema,
    }
    for (method, path), schema in bodies.items():
        body = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
        name = type(schema).__name__.removesuffix("Schema")
        assert body == {"$ref": f"#/components/schemas/{name}"}
        assert set(doc["components"]["schemas"][name]["properties"]) == set(schema.fields)
    # POST /auth takes a user's login or a client's credentials.
    body = doc["paths"]["/auth"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"oneOf": [{"$ref": "#/components/schemas/Login"}, {"$ref": "#/components/schemas/ClientLogin"}]}
    for schema in (auth.login_schema, auth.client_login_schema):
        name = type(schema).__name__.removesuffix("Schema")
        assert set(doc["components"]["schemas"][name]["properties"]) == set(schema.fields)


async def test_served_document(make_client) -> None:
    client = await make_client(introspection_clients=(("svc", "a-long-enough-service-secret"),))
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert "public" in resp.headers["Cache-Control"]
    doc = await resp.json()
    assert documented(doc) == openapi.routes_of(client.app)
    assert doc["servers"] == [{"url": client.app[SETTINGS].public_url}]


async def test_introspection_is_documented_without_configured_clients(client) -> None:
    """Registered clients may introspect, so /auth/introspect is always there (it was 404 and
    left out of the document while only AUTHSVC_INTROSPECTION_CLIENTS could use it)."""
    doc = await (await client.get("/openapi.json")).json()
    assert documented(doc) == openapi.routes_of(client.app)
    assert (await client.post("/auth/introspect", data={"token": "x"})).status == 401


@settings(max_examples=100, deadline=None, database=None)
@given(st.from_regex(openapi.EMAIL_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 254))
def test_documented_emails_are_accepted(email: str) -> None:
    """What the document calls an email, the signup schema takes."""
    assert SignupSchema().load({"email": email, "password": "long enough password"})["email"] == email


@settings(max_examples=100, deadline=None, database=None)
@given(st.emails())
def test_accepted_emails_are_documented(email: str) -> None:
    try:
        validate.Email()(email)
    except ValidationError:
        return
    local, _, domain = email.rpartition("@")
    if "xn--" in domain.lower():
        # A Punycode label is valid or not by IDNA, which no regular expression can tell, so
        # the pattern leaves such domains to the description ("internationalised addresses
        # are taken too"): the schema takes them, stored decoded.
        loaded = SignupSchema().load({"email": email, "password": "long enough password"})["email"]
        assert loaded.rpartition("@")[0] == local and "xn--" not in loaded.rpartition("@")[2].lower()
        return
    assert re.fullmatch(openapi.EMAIL_PATTERN, email)


async def test_with_the_password_grant_off_the_token_endpoint_offers_no_password_grant(make_client) -> None:
    # Clients' grant stays (and its throttle's 429), the password grant goes.
    client = await make_client(password_grant=False)
    doc = await (await client.get("/openapi.json")).json()
    body = doc["paths"]["/auth/token"]["post"]["requestBody"]["content"][openapi.FORM]["schema"]
    assert body == {
        "oneOf": [{"$ref": "#/components/schemas/ClientCredentialsGrant"}, {"$ref": "#/components/schemas/RefreshGrant"}]
    }
    on = await (await (await make_client()).get("/openapi.json")).json()
    assert "oneOf" in on["paths"]["/auth/token"]["post"]["requestBody"]["content"][openapi.FORM]["schema"]


async def test_metrics_media_types_are_both_documented(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    documented_types = set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"])
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        resp = await client.get("/metrics", headers={"Accept": accept})
        assert resp.status == 200 and resp.content_type in documented_types, resp.content_type


async def test_todo_pages_are_documented(client, auth) -> None:
    """The cursor, the capped offset and the Link header, as the list route serves them."""
    doc = await (await client.get("/openapi.json")).json()
    op = doc["paths"]["/todos"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["after"]["schema"] == {"type": "integer", "minimum": 0, "maximum": MAX_ID}
    assert params["offset"]["schema"]["maximum"] == MAX_OFFSET
    assert "after" in params["offset"]["description"] and "offset" in params["after"]["description"]
    link = op["responses"]["200"]["headers"]["Link"]
    assert link["required"] is False  # only on a full page
    for todo in range(2):
        assert (await client.post("/todos", json={"text": f"todo {todo}"}, headers=auth)).status == 201
    resp = await client.get("/todos?limit=1", headers=auth)
    assert re.fullmatch(link["schema"]["pattern"], resp.headers["Link"])
    assert "Link" not in (await client.get("/todos?limit=3", headers=auth)).headers
