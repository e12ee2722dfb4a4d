"""Domain errors: each carries its HTTP status and a stable snake_case code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400
    code = "bad_request"
    message = "The request is not valid."
    close_connection = False  # the connection is not reusable after this error

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequest(ApiError):
    code = "invalid_request"


class OAuthError(ApiError):
    """RFC 6749 section 5.2 error: 400 with `error` and `error_description`."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.message, "message": self.message}


class InvalidGrant(OAuthError):
    def __init__(self, description: str = "The refresh token is invalid, expired or revoked.") -> None:
        super().__init__("invalid_grant", description)


class InvalidScope(ApiError):
    """RFC 6749 5.2 invalid_scope: a requested scope is unknown or beyond what the identity may
    have. The OAuth endpoints answer it as an OAuthError (oauth.py)."""

    code = "invalid_scope"
    message = "The requested scope is not valid."


class InvalidBody(ApiError):
    code = "invalid_body"
    message = "The body could not be read (is its Content-Encoding or chunked encoding right?)."
    close_connection = True  # where the broken body ends is unknown: nothing after it can be read


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"
    message = "The request body did not arrive in time."
    close_connection = True


class InvalidJson(ApiError):
    code = "invalid_json"
    message = "The body is not valid JSON."


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"
    message = "Send the body as application/json."


class ValidationFailed(ApiError):
    status = 422
    code = "validation_failed"
    message = "Some fields are not valid."


class PasswordRefused(ApiError):
    """A well-formed new password that the password policy refuses (password_policy.py)."""

    status = 422
    code = "password_refused"
    message = "Choose another password."


class PasswordTooCommon(PasswordRefused):
    code = "password_too_common"
    message = "This password is too easy to guess."


class PasswordContextual(PasswordRefused):
    code = "password_contextual"
    message = "This password is made from the account's email address or name, which are guessed first."


class PasswordBreached(PasswordRefused):
    code = "password_breached"
    message = "This password appears in data breaches, so it is in attackers' lists; choose another."


class NotFound(ApiError):
    status = 404
    code = "not_found"
    message = "Nothing here."


class Conflict(ApiError):
    status = 409
    code = "conflict"


class EmailTaken(Conflict):
    code = "email_taken"
    message = "An account with this email already exists."


class OwnAccount(Conflict):
    """An admin acting on their own account in a way that would lock them out."""

    code = "own_account"
    message = (
        "An admin cannot disable, delete or take scopes from their own account; "
        "another admin or an operator (authsvc users ...) can."
    )


class UnknownRole(ApiError):
    """A role that AUTHSVC_ROLES does not define."""

    status = 422
    code = "unknown_role"
    message = "No such role."


class ApiKeyLimit(Conflict):
    code = "too_many_api_keys"
    message = "This account has as many API keys as it may; delete one first."


class WrongCurrentPassword(ApiError):
    status = 403
    code = "invalid_current_password"
    message = "The current password is not correct."


class InvalidCredentials(ApiError):
    # One message for unknown user, wrong password and throttled-but-correct: no enumeration.
    status = 401
    code = "invalid_credentials"
    message = "The email or password is not correct."

    def __init__(self, message: str | None = None) -> None:
        # Every 401 carries a challenge (RFC 9110 15.5.2): what this service's routes accept.
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="authsvc"'})


class ClientUnauthorized(ApiError):
    """A service credential (introspection) missing or wrong: RFC 6749 5.2 invalid_client."""

    status = 401
    code = "invalid_client"
    message = "Authenticate with a service credential (HTTP Basic)."

    def __init__(self) -> None:
        super().__init__(headers={"WWW-Authenticate": 'Basic realm="authsvc"'})


class InvalidClient(OAuthError):
    """RFC 6749 5.2 invalid_client: one answer for an unknown client, a wrong secret or
    assertion, and a disabled client (no enumeration), with the Basic challenge."""

    status = 401

    def __init__(self, description: str = "Client authentication failed.") -> None:
        super().__init__("invalid_client", description)
        self.headers = {"WWW-Authenticate": 'Basic realm="authsvc"'}


class ClientNameTaken(Conflict):
    code = "client_name_taken"
    message = "A client with this name exists already."


class ClientHasNoSecrets(Conflict):
    code = "client_has_no_secrets"
    message = "This client authenticates with private_key_jwt: it has no secrets."


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"
    message = "Send a bearer token in the Authorization header."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="authsvc"'})


class InvalidToken(ApiError):
    status = 401
    code = "invalid_token"
    message = "The access token is invalid or has expired."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message,
            headers={"WWW-Authenticate": 'Bearer realm="authsvc", error="invalid_token"'},
        )


class InsufficientScope(ApiError):
    """RFC 6750 3.1: a valid token that may not do this; the challenge names what it needs."""

    status = 403
    code = "insufficient_scope"
    message = "The token does not have the scope this needs."

    def __init__(self, needed: tuple[str, ...], message: str | None = None) -> None:
        challenge = 'Bearer realm="authsvc", error="insufficient_scope"'
        if needed:
            challenge += f', scope="{" ".join(needed)}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})
        self.needed = needed


class TooManyAttempts(ApiError):
    status = 429
    code = "too_many_attempts"
    message = "Too many attempts; try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__(headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class Busy(ApiError):
    status = 503
    code = "busy"
    message = "The service is busy; try again shortly."

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
    message = "The database is not available."

    def __init__(self, retry_after: int = 2) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})
