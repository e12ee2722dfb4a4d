"""Request and response shapes (marshmallow). Unknown fields are refused everywhere."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from authsvc.auth import emails
from authsvc.auth.ids import MAX_ID

PASSWORD_MIN = 8
PASSWORD_MAX = 1024  # characters; keeps refusing an absurd password cheaper than hashing it


class Text(fields.String):
    """A string PostgreSQL and UTF-8 can store: no NUL, no lone surrogates."""

    default_error_messages = {"unstorable": "Must not contain NUL characters or unpaired surrogates."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("unstorable")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("unstorable") from None
        return text


class StrictBoolean(fields.Boolean):
    """JSON true or false only: no "yes", 1 or "true" strings in a JSON body."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class WholeNumber(fields.Integer):
    """A JSON integer: 5 or 5.0 (JSON Schema counts both), never true, "5" or 5.5."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Email(Text):
    """An address as it is stored: normalised (authsvc/emails.py); invisible, format and control
    characters are refused, and so is what email-validator refuses."""

    default_error_messages = {"not_email": "Not a valid email address. {reason}"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return emails.normalise(text).email
        except emails.InvalidEmail as exc:
            raise self.make_error("not_email", reason=exc) from None


class Base(Schema):
    class Meta:
        unknown = RAISE


def password(**kwargs: Any) -> Text:
    # Passwords are compared exactly as typed: no strip, no normalisation, no truncation.
    return Text(required=True, validate=validate.Length(PASSWORD_MIN, PASSWORD_MAX), **kwargs)


def name() -> Text:
    return Text(allow_none=True, validate=validate.Length(max=100))


# --- users ---


class SignupSchema(Base):
    email = Email(required=True, validate=validate.Length(max=254))
    password = password()
    first_name = name()
    last_name = name()


class UserPatchSchema(Base):
    first_name = name()
    last_name = name()


class PasswordChangeSchema(Base):
    current_password = Text(required=True, validate=validate.Length(1, PASSWORD_MAX))
    new_password = password()


# Answers: `required` here is for the OpenAPI document (every answer has every field).


class UserSchema(Schema):
    id = fields.Integer(required=True)
    email = fields.String(required=True)
    first_name = fields.String(required=True, allow_none=True)
    last_name = fields.String(required=True, allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)


# --- api keys ---


# RFC 6749 3.3 scope-token characters; which names exist is the deployment's (400 invalid_scope).
SCOPE_NAME = r"^[\x21\x23-\x5B\x5D-\x7E]{1,64}$"
API_KEY_MAX_LIFETIME = 10 * 365 * 86400  # seconds; no expires_in: the key lasts until deleted


class ApiKeyCreateSchema(Base):
    name = Text(required=True, validate=validate.Length(1, 100))
    scopes = fields.List(
        fields.String(validate=validate.Regexp(SCOPE_NAME)),
        required=True,
        validate=validate.Length(1, 50),
        metadata={"description": "Some of the scopes the owner's roles grant (else 400 invalid_scope)."},
    )
    expires_in = WholeNumber(
        validate=validate.Range(60, API_KEY_MAX_LIFETIME),
        metadata={"description": "Seconds until the key stops working; without it, it works until deleted."},
    )


class ApiKeySchema(Schema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True, metadata={"description": "The start of the key, to tell keys apart."})
    scopes = fields.List(fields.String(), required=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(required=True, allow_none=True)
    last_used_at = fields.AwareDateTime(
        required=True, allow_none=True, metadata={"description": "Recorded within a minute or so of the use."}
    )


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(required=True, metadata={"description": "The key itself: shown this once, never again."})


def api_key_json(key: Any) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at is not None else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at is not None else None,
    }


# --- login ---


SCOPE_MAX = 2000  # a scope parameter's characters: dozens of names


class LoginSchema(Base):
    """{"username" or "email", "password", "scope"?}: both names mean the account's email;
    scope (space-separated) narrows the token to some of what the user's roles grant."""

    username = Text(validate=validate.Length(1, 254))
    email = Text(validate=validate.Length(1, 254))
    password = Text(required=True, validate=validate.Length(1, PASSWORD_MAX))
    scope = Text(validate=validate.Length(0, SCOPE_MAX))

    # The rule below, for the OpenAPI document (authsvc/openapi.py adds it to this schema).
    json_schema_extra: dict[str, Any] = {"oneOf": [{"required": ["username"]}, {"required": ["email"]}]}

    @validates_schema
    def one_identifier(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("username" in data) == ("email" in data):
            raise ValidationError("Give exactly one of username or email.", "username")


class ClientLoginSchema(Base):
    """{"client_id", "client_secret", "scope"?}: a client's own token, as client_credentials
    with client_secret_post gives it on /auth/token."""

    client_id = Text(required=True, validate=validate.Length(1, 64))
    client_secret = Text(required=True, validate=validate.Length(1, 1024))
    scope = Text(validate=validate.Length(0, SCOPE_MAX))


class Form(Base):
    """Parameters of an OAuth form body."""

    class Meta:
        unknown = "exclude"  # RFC 6749 3.2: unrecognised parameters are ignored

    # For the OpenAPI document: other parameters are ignored, but each is one string (a
    # parameter given twice is invalid_request).
    json_schema_extra: dict[str, Any] = {"additionalProperties": {"type": "string"}}


def form_token() -> Text:
    return Text(required=True, validate=validate.Length(1, 1024))


class TokenGrantSchema(Form):
    """The form of RFC 6749 section 4.3; scope narrows the token, client_id is ignored."""

    grant_type = Text(required=True, validate=validate.Equal("password"))
    username = Text(required=True, validate=validate.Length(1, 254))
    password = Text(required=True, validate=validate.Length(1, PASSWORD_MAX))
    scope = Text(validate=validate.Length(0, SCOPE_MAX))
    client_id = Text()


class ClientCredentialsGrantSchema(Form):
    """RFC 6749 4.4, the client authenticated by HTTP Basic (client_secret_basic), by
    client_id and client_secret here (client_secret_post), or by a signed JWT (RFC 7523
    private_key_jwt: client_assertion_type and client_assertion)."""

    grant_type = Text(required=True, validate=validate.Equal("client_credentials"))
    scope = Text(validate=validate.Length(0, SCOPE_MAX))
    client_id = Text(validate=validate.Length(1, 64))
    client_secret = Text(validate=validate.Length(1, 1024))
    client_assertion_type = Text(
        validate=validate.Equal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    )
    client_assertion = Text(validate=validate.Length(1, 8192))


class RefreshGrantSchema(Form):
    """The form of RFC 6749 section 6; a refresh keeps its login's scopes (scope is ignored)."""

    grant_type = Text(required=True, validate=validate.Equal("refresh_token"))
    refresh_token = form_token()
    scope = Text()
    client_id = Text()


class TokenFormSchema(Form):
    """The form of RFC 7009 revocation and RFC 7662 introspection."""

    token = form_token()
    token_type_hint = Text()


class RefreshSchema(Base):
    # Any string up to the size of a JWT: what is not one of ours is invalid_grant, as on /auth/token.
    refresh_token = Text(required=True, validate=validate.Length(1, 4096))


class LogoutQuery(Base):
    scope = fields.String(load_default="session", validate=validate.OneOf(["session", "all"]))


class TokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True, validate=validate.Equal("bearer"))
    expires_in = fields.Integer(required=True)
    refresh_token = fields.String(metadata={"description": "Not given to a client (client_credentials)."})
    scope = fields.String(required=True, metadata={"description": "What the access token may do, space-separated."})


class IntrospectionSchema(Schema):
    """RFC 7662 2.2: only `active` when the token is not usable; its claims when it is."""

    class Meta:
        unknown = INCLUDE

    active = fields.Boolean(required=True)
    token_type = fields.String(validate=validate.OneOf(["access_token", "refresh_token", "api_key"]))
    sub = fields.String()
    sid = fields.String()
    exp = fields.Integer()
    iat = fields.Integer()
    iss = fields.String()
    aud = fields.String()
    jti = fields.String()
    scope = fields.String()
    key_id = fields.String(metadata={"description": "An API key's id (token_type api_key)."})


# --- clients (admin) ---


class ClientCreateSchema(Base):
    name = Text(required=True, validate=validate.Length(1, 100))
    # Each a scope name (RFC 6749 3.3 characters; a comma would split it): one this service knows, else 400.
    scopes = fields.List(
        fields.String(validate=validate.Regexp(r"^[!#-+\--\[\]-~]{1,64}$")),
        required=True,
        validate=validate.Length(max=100),
    )
    auth_method = fields.String(
        load_default="client_secret", validate=validate.OneOf(["client_secret", "private_key_jwt"])
    )
    jwks = fields.Dict(metadata={"description": "private_key_jwt: the client's public keys (a JWK Set)."})
    jwks_uri = fields.String(
        validate=[validate.Length(1, 2000), validate.Regexp(r"^https?://[!-~]+$")],
        metadata={"description": "private_key_jwt: where its JWK Set is (instead of jwks)."},
    )
    token_ttl = WholeNumber(
        validate=validate.Range(60, 86_400), metadata={"description": "Its tokens' lifetime, seconds."}
    )


class ClientSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    auth_method = fields.String(required=True, validate=validate.OneOf(["client_secret", "private_key_jwt"]))
    jwks_uri = fields.String(required=True, allow_none=True)
    token_ttl = fields.Integer(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    disabled_at = fields.AwareDateTime(required=True, allow_none=True)
    client_secret = fields.String(metadata={"description": "Only in the answer that creates it: shown once."})


class ClientSecretSchema(Schema):
    client_id = fields.String(required=True)
    client_secret = fields.String(required=True, metadata={"description": "Shown once."})


class RetiredSchema(Schema):
    retired = fields.Integer(required=True, metadata={"description": "Secrets retired: all but the newest."})


def client_json(client: Any) -> dict[str, Any]:
    return {
        "id": client.id,
        "name": client.name,
        "scopes": list(client.scopes),
        "auth_method": client.auth_method,
        "jwks_uri": client.jwks_uri,
        "token_ttl": client.token_ttl,
        "created_at": client.created_at.isoformat(),
        "updated_at": client.updated_at.isoformat(),
        "disabled_at": client.disabled_at.isoformat() if client.disabled_at else None,
    }


# --- todos ---


def todo_text(**kwargs: Any) -> Text:
    return Text(validate=validate.Length(1, 1000), **kwargs)


class TodoCreateSchema(Base):
    text = todo_text(required=True)
    completed = StrictBoolean(load_default=False)


class TodoPutSchema(Base):
    text = todo_text(required=True)
    completed = StrictBoolean(required=True)


class TodoPatchSchema(Base):
    text = todo_text()
    completed = StrictBoolean()


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (no "1_0", no other scripts' digits),
    at most `max_digits` of them (so a huge number is refused before int() works on it)."""

    def __init__(self, *, max_digits: int = 12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_digits = max_digits

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= self.max_digits):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


# OFFSET reads and throws away every row it skips, so a deep offset costs as much as all the
# pages before it; `after` (keyset) costs the same at any depth. Past this, use `after`.
MAX_OFFSET = 10_000


class TodoListQuery(Base):
    limit = QueryInteger(
        load_default=50, validate=validate.Range(1, 200), metadata={"description": "Todos per page."}
    )
    after = QueryInteger(
        max_digits=19,
        validate=validate.Range(0, MAX_ID),
        metadata={
            "description": "The id of the last todo of the previous page (the Link header's next page "
            "gives it): the page starts after it, as cheap at any depth. Not with offset."
        },
    )
    offset = QueryInteger(
        load_default=0,
        validate=validate.Range(
            0, MAX_OFFSET, error=f"Must be between 0 and {MAX_OFFSET}; to go deeper, page with after."
        ),
        metadata={
            "description": f"Todos to skip, at most {MAX_OFFSET}: kept for older clients, and slower the "
            "deeper it goes (use after). Not with after."
        },
    )
    completed = fields.Boolean(truthy={"true"}, falsy={"false"})

    # At most one of these in a query: a page is either after an id or past an offset. OpenAPI
    # cannot say this of two parameters, so tests/api/test_fuzz.py reads it from here.
    exclusive = ("after", "offset")

    @validates_schema(pass_original=True)
    def one_way_to_page(self, data: dict[str, Any], original: dict[str, Any], **kwargs: Any) -> None:
        given = [name for name in self.exclusive if name in original]
        if len(given) > 1:
            message = "Give after or offset, not both: after pages by id, offset counts rows."
            raise ValidationError({name: [message] for name in given})


class TodoSchema(Schema):
    id = fields.Integer(required=True)
    text = fields.String(required=True)
    completed = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)


# --- admin ---


class AdminUserListQuery(Base):
    email_prefix = Text(
        validate=validate.Length(1, 254),
        metadata={"description": "Only users whose email starts with this, in any case."},
    )
    limit = QueryInteger(
        load_default=50, validate=validate.Range(1, 200), metadata={"description": "Users per page."}
    )
    after = QueryInteger(
        max_digits=19,
        load_default=0,
        validate=validate.Range(0, MAX_ID),
        metadata={"description": "The id of the last user of the previous page (the Link header's next page gives it)."},
    )


ROLE_NAME = r"^[\x21\x23-\x5B\x5D-\x7E]{1,64}$"  # a scope-token (RFC 6749 3.3), as AUTHSVC_ROLES takes


class RolesSchema(Base):
    roles = fields.List(
        Text(validate=validate.Regexp(ROLE_NAME, error="Not a role name.")),
        required=True,
        validate=validate.Length(max=32),
        metadata={"description": "Exactly the roles the user is to hold, of those AUTHSVC_ROLES defines."},
    )


class AdminUserSchema(UserSchema):
    roles = fields.List(fields.String(), required=True)
    disabled_at = fields.AwareDateTime(required=True, allow_none=True)


# The answers are built by hand below: marshmallow's dump took 200 us for a page of 20 todos,
# a fifth of the whole request. The schemas above stay the documented shape, and a test
# checks that these functions give exactly what they would.


def user_json(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "created_at": user.created_at.isoformat(),
        "updated_at": user.updated_at.isoformat(),
    }


def admin_user_json(user: Any) -> dict[str, Any]:
    return {
        **user_json(user),
        "roles": sorted(user.roles),
        "disabled_at": user.disabled_at.isoformat() if user.disabled_at is not None else None,
    }


# --- errors and service documents ---


class ErrorSchema(Schema):
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()  # field name -> messages, on validation_failed


class OAuthErrorSchema(Schema):
    """RFC 6749 5.2, with `message` as in every other error."""

    error = fields.String(
        required=True,
        validate=validate.OneOf([
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "invalid_scope",
            "unauthorized_client",
            "unsupported_grant_type",
        ]),
    )
    error_description = fields.String(required=True)
    message = fields.String(required=True)


class StatusSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "ready"]))


class JwkSchema(Schema):
    """A public key (RFC 7517); the members besides these depend on the key type."""

    class Meta:
        unknown = INCLUDE

    kty = fields.String(required=True)
    kid = fields.String(required=True)
    alg = fields.String(required=True)
    use = fields.String(required=True, validate=validate.Equal("sig"))


class JwksSchema(Schema):
    keys = fields.List(fields.Nested(JwkSchema), required=True)


class MetadataSchema(Schema):
    """RFC 8414 authorization server metadata."""

    issuer = fields.String(required=True)
    jwks_uri = fields.String(required=True)
    token_endpoint = fields.String(required=True)
    revocation_endpoint = fields.String(required=True)
    scopes_supported = fields.List(fields.String(), required=True)
    grant_types_supported = fields.List(fields.String(), required=True)
    token_endpoint_auth_methods_supported = fields.List(fields.String(), required=True)
    token_endpoint_auth_signing_alg_values_supported = fields.List(fields.String(), required=True)
    id_token_signing_alg_values_supported = fields.List(fields.String(), required=True)
    access_token_signing_alg_values_supported = fields.List(fields.String(), required=True)
    audience = fields.String(required=True)
    introspection_endpoint = fields.String(required=True)
    introspection_endpoint_auth_methods_supported = fields.List(fields.String(), required=True)
