"""A real authsvc for the tests of services that depend on it: a pytest plugin.

    # conftest.py of the dependent service
    pytest_plugins = ["authsvc.testing"]

    # pytest.ini / pyproject [tool.pytest.ini_options]
    authsvc_scopes = orders:read orders:write

    def test_orders(authsvc):
        token = authsvc.user_token(["orders:read"])      # a user's login token
        token = authsvc.client_token(["orders:write"])   # a client's (client_credentials)
        key = authsvc.api_key(["orders:read"])           # a user's API key
        verifier = authsvc.verifier(audience="authsvc")  # authsvc.verifier.TokenVerifier for it

The `authsvc` fixture starts, once per test session, an embedded PostgreSQL and
`authsvc serve` on a loopback port (bcrypt at its lowest cost), and hands out real tokens
made by its real endpoints: the dependent service's tests check what production checks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from authsvc.testing.server import AuthsvcServer, started

__all__ = ["AuthsvcServer", "started"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("authsvc_scopes", "scopes of the services under test, given to the authsvc the plugin starts", default="")


@pytest.fixture(scope="session")
def authsvc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthsvcServer]:
    """A running authsvc for the whole session (see the module's docstring)."""
    scopes = str(request.config.getini("authsvc_scopes")).split()
    with started(tmp_path_factory.mktemp("authsvc"), scopes) as server:
        yield server
