"""The README's walkthrough (docs/walkthrough.sh) runs top to bottom against a real server.

The README shows the script's text after its marker line; this keeps the two equal, so what a
new user reads is what runs here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
from servers import run_command, serving

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "walkthrough.sh"
SCRIPT_MARKER = "# --- walkthrough ---\n"
README_BEGIN = re.compile(r"^<!-- walkthrough: .*-->\n```sh\n", re.MULTILINE)
README_END = "```\n<!-- /walkthrough -->\n"

EMAIL = "ada@example.com"
FIRST_PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "tangerine walrus on a unicycle"

# Every call the walkthrough makes, in order, with the status it must answer: a call that
# went missing, came in another order or answered anything else fails the test.
EXPECTED = [
    "201 POST /users",
    "200 POST /auth",
    "200 GET /users/me",
    "200 PATCH /users/me",
    "201 POST /todos",
    "200 GET /todos?limit=20&completed=false",
    "200 GET /todos?after={id}&limit=20&completed=false",
    "200 GET /todos/{id}",
    "200 PATCH /todos/{id}",
    "200 PUT /todos/{id}",
    "204 DELETE /todos/{id}",
    "201 POST /users/me/api-keys",
    "200 GET /todos",
    "403 GET /users/me",
    "200 GET /users/me/api-keys",
    "204 DELETE /users/me/api-keys/{key}",
    "401 GET /todos",
    "200 POST /auth/refresh",
    "200 POST /auth/token",
    "204 POST /users/me/password",
    "200 POST /auth",
    "200 GET /.well-known/jwks.json",
    "200 GET /.well-known/oauth-authorization-server",
    "204 POST /auth/logout",
    "204 POST /auth/logout?scope=all",
]


def readme_walkthrough() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin = README_BEGIN.search(readme)
    assert begin, "README.md has no walkthrough block (<!-- walkthrough: ... --> then ```sh)"
    end = readme.find(README_END, begin.end())
    assert end != -1, "the README's walkthrough block has no end (``` then <!-- /walkthrough -->)"
    return readme[begin.end() : end]


def script_walkthrough() -> str:
    script = SCRIPT.read_text(encoding="utf-8")
    assert script.count(SCRIPT_MARKER) == 1, f"{SCRIPT} needs one {SCRIPT_MARKER.strip()!r} line"
    return script.split(SCRIPT_MARKER, 1)[1]


def test_the_readme_shows_the_script_as_it_is():
    assert readme_walkthrough() == script_walkthrough(), (
        "README.md's walkthrough differs from docs/walkthrough.sh after its marker: copy the script's text"
    )


def test_the_script_is_executable():
    assert os.access(SCRIPT, os.X_OK), f"chmod +x {SCRIPT}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The pepper and the EdDSA key file, made as an operator makes them for an external database."""
    data = tmp_path / "data"
    # secrets init only writes files; the URL just says "not embedded".
    made = run_command("secrets", "init", AUTHSVC_DATA_DIR=str(data), AUTHSVC_DATABASE_URL="postgresql://x@db/y")
    assert made.returncode == 0, made.stderr
    return data


async def run_walkthrough(base: str, cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    # `field` runs python3: the one running the tests, whatever else is first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), base, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the walkthrough did not finish in 120 s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_the_walkthrough_runs_against_a_real_server(databases, tmp_path, data_dir):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the walkthrough is curl commands")
    # The default token algorithm (EdDSA, keys from the key file), on a database of its own:
    # the same email signs up in every run.
    settings = {
        "AUTHSVC_DATABASE_URL": databases.create(migrated=False),
        "AUTHSVC_DATA_DIR": str(data_dir),
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_WORKERS": "1",
    }
    async with serving(tmp_path, **settings) as served:
        code, out, err = await run_walkthrough(served.base, tmp_path)
        assert (code, err) == (0, ""), f"the walkthrough failed (exit {code}):\n{out}{err}"
        ids = [re.sub(r"/todos/\d+\b", "/todos/{id}", line) for line in out.splitlines()]
        ids = [re.sub(r"/api-keys/[0-9a-f-]{36}\b", "/api-keys/{key}", line) for line in ids]
        calls = [re.sub(r"(?<=after=)\d+", "{id}", line) for line in ids]
        assert calls == EXPECTED

        # What it did stayed done: the new password logs in, the first one no longer does.
        async with aiohttp.ClientSession() as http:
            async with http.post(served.base + "/auth", json={"username": EMAIL, "password": NEW_PASSWORD}) as r:
                assert r.status == 200
            async with http.post(served.base + "/auth", json={"username": EMAIL, "password": FIRST_PASSWORD}) as r:
                assert r.status == 401
    assert served.proc.returncode == 0

    # The server's log holds no password, no pepper and no private key of this run.
    log = served.output
    pepper = (data_dir / "secrets" / "password_pepper").read_text().strip()
    keys = json.loads((data_dir / "keys" / "signing-keys.json").read_text())["keys"]
    private_lines = [line for key in keys for line in key["private_key"].splitlines() if not line.startswith("-")]
    for secret in [FIRST_PASSWORD, NEW_PASSWORD, pepper, *private_lines]:
        assert secret not in log
