"""authsvc.testing as a dependent service uses it: its own pytest run, in a directory of its
own, with a real authsvc started by the plugin and tokens made by authsvc's endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SERVICE_TESTS = '''
from aiohttp import web

from authsvc.verifier import CLIENT_ID, SCOPES, SUBJECT_KIND, require_scopes


def service(verifier):
    """A service that depends on authsvc: reading orders needs orders:read."""
    app = web.Application(middlewares=[verifier.middleware])
    app.cleanup_ctx.append(verifier.ctx)

    @require_scopes("orders:read")
    async def orders(request):
        return web.json_response(
            {"kind": request[SUBJECT_KIND], "client_id": request[CLIENT_ID], "scopes": sorted(request[SCOPES])}
        )

    app.router.add_get("/orders", orders)
    return app


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


async def test_a_user_with_the_scope_reads_and_one_without_is_403(aiohttp_client, authsvc):
    client = await aiohttp_client(service(authsvc.verifier()))
    resp = await client.get("/orders", headers=bearer(authsvc.user_token(["orders:read"])))
    assert resp.status == 200, await resp.text()
    assert (await resp.json()) == {"kind": "user", "client_id": None, "scopes": ["orders:read"]}
    resp = await client.get("/orders", headers=bearer(authsvc.user_token(["orders:write"])))
    assert resp.status == 403 and 'scope="orders:read"' in resp.headers["WWW-Authenticate"]


async def test_a_client_token(aiohttp_client, authsvc):
    client = await aiohttp_client(service(authsvc.verifier()))
    resp = await client.get("/orders", headers=bearer(authsvc.client_token(["orders:read", "orders:write"])))
    body = await resp.json()
    assert resp.status == 200 and body["kind"] == "client", body
    assert body["client_id"].startswith("cl_") and body["scopes"] == ["orders:read", "orders:write"]


async def test_an_api_key(aiohttp_client, authsvc):
    client = await aiohttp_client(service(authsvc.verifier()))
    resp = await client.get("/orders", headers=bearer(authsvc.api_key(["orders:read"])))
    body = await resp.json()
    assert resp.status == 200 and body["kind"] == "api_key" and body["scopes"] == ["orders:read"], body
    resp = await client.get("/orders", headers=bearer(authsvc.api_key(["todos"])))
    assert resp.status == 403


async def test_a_made_up_token_is_401(aiohttp_client, authsvc):
    client = await aiohttp_client(service(authsvc.verifier()))
    assert (await client.get("/orders", headers=bearer("ak_0000_not-a-key"))).status == 401
'''

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
authsvc_scopes = orders:read orders:write
"""


def test_a_dependent_service_tests_against_a_real_authsvc(tmp_path: Path) -> None:
    project = tmp_path / "orders-service"
    project.mkdir()
    (project / "pytest.ini").write_text(textwrap.dedent(INI))
    (project / "conftest.py").write_text('pytest_plugins = ["authsvc.testing"]\n')
    (project / "test_orders.py").write_text(SERVICE_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PYTEST_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(project), str(project)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout, done.stdout[-2000:]
