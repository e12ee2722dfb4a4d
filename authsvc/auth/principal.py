"""Who is asking: a user through a login session, a client with its own token, or a user's
API key; and what it may do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from authsvc.db.repo.users import User

USER = "user"
CLIENT = "client"
API_KEY = "api_key"
OPERATOR = "operator"  # the actor of a command run by an operator (authsvc.cli)
OPERATOR_ADDRESS = "local"  # the address its audit records give: it came from no network


@dataclass(frozen=True)
class Principal:
    kind: str  # USER, CLIENT or API_KEY
    scopes: frozenset[str]
    user_id: int | None = None  # USER and API_KEY
    user: User | None = None  # its row, where the check read it (not on routes that check in their own statement)
    session_id: uuid.UUID | None = None  # USER
    client_id: str | None = None  # CLIENT
    api_key_id: uuid.UUID | None = None  # API_KEY

    @property
    def actor(self) -> str:
        """How the audit record names this identity."""
        if self.kind == CLIENT:
            return f"client:{self.client_id}"
        if self.kind == API_KEY:
            return f"api_key:{self.api_key_id}"
        return f"user:{self.user_id}"
