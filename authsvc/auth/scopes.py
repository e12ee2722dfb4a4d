"""The scope model: which scopes exist, which a role grants, and how a request narrows them.

A token's `scope` claim (RFC 9068, space-separated) is what it may do; a route names the scope
it needs. Users get scopes from their roles, clients and API keys from what they were given."""

from __future__ import annotations

from collections.abc import Iterable

from authsvc.errors import InvalidScope
from authsvc.settings import BUILTIN_SCOPES, Settings
from authsvc.settings.parse import scope_names


def format_scopes(scopes: Iterable[str]) -> str:
    """A scope claim or parameter: sorted, space-separated."""
    return " ".join(sorted(scopes))


class ScopeModel:
    def __init__(self, extra: Iterable[str], roles: dict[str, frozenset[str]], default_role: str) -> None:
        self.known = BUILTIN_SCOPES | frozenset(extra)
        self._roles = roles
        self.default_role = default_role

    @classmethod
    def from_settings(cls, settings: Settings) -> ScopeModel:
        roles = {name: frozenset(granted) for name, granted in settings.roles}
        return cls(settings.scopes, roles, settings.default_role)

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self._roles)

    def of_roles(self, roles: Iterable[str]) -> frozenset[str]:
        """What these roles grant together; a role no longer configured grants nothing."""
        granted: frozenset[str] = frozenset()
        for role in roles:
            granted |= self._roles.get(role, frozenset())
        return granted

    def parse(self, text: str | None) -> frozenset[str] | None:
        """A requested `scope` (None or blank: none asked for); InvalidScope for a name we do
        not know or one that is not a scope name at all."""
        if text is None or not text.strip():
            return None
        try:
            names = frozenset(scope_names(text))
        except ValueError as exc:
            raise InvalidScope(str(exc)) from None
        unknown = sorted(names - self.known)
        if unknown:
            raise InvalidScope(f"{unknown[0]!r} is not a scope here.")
        return names

    def check_names(self, names: Iterable[str]) -> frozenset[str]:
        """Scopes given as a list (API keys, clients): each must be a known scope."""
        return self.parse(" ".join(names)) or frozenset()

    @staticmethod
    def narrow(requested: frozenset[str] | None, allowed: frozenset[str]) -> frozenset[str]:
        """The scopes to grant: all allowed when none are asked for, else those asked for, each
        of which must be allowed (RFC 6749 3.3: invalid_scope past that)."""
        if requested is None:
            return allowed
        beyond = sorted(requested - allowed)
        if beyond:
            raise InvalidScope(f"The scope {beyond[0]!r} is not granted to this identity.")
        return requested
