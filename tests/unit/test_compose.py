"""docker-compose.yml and the Dockerfile, checked against the settings and commands the app really has.

There is no Docker engine here, so this keeps the files honest instead of running them.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from authsvc import app as app_module
from authsvc import settings as config
from authsvc.cli import main as cli
from authsvc.cli import secretfiles

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return {k: str(v) for k, v in env.items()}


def _authsvc_commands(service: dict[str, Any]) -> list[list[str]]:
    """Each `authsvc ...` invocation in the service's command, shell chains included."""
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def test_services_and_their_order(compose):
    services = compose["services"]
    assert set(services) == {"db", "migrate", "app", "proxy"}
    assert services["db"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    # Every replica waits for the one migrate job; none migrates itself.
    assert services["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["app"]["deploy"]["replicas"] >= 2
    assert services["proxy"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", ["migrate", "app"])
def test_every_setting_is_one_the_app_reads(compose, name):
    env = _env(compose["services"][name])
    known = {config.env_name(field) for field in config.FIELDS}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    settings = config.from_env(env)  # parses every value, as the app would
    assert not settings.embedded
    host = urllib.parse.urlsplit(settings.database_url).hostname
    assert host in compose["services"], "the database URL names a compose service"
    mounts = [v.split(":")[1] for v in compose["services"][name]["volumes"]]
    assert str(settings.data_dir) in mounts, "the data dir (secret files) is a shared volume"


def test_no_secret_is_written_in_the_file(compose):
    for service in compose["services"].values():
        env = _env(service)
        assert "AUTHSVC_TOKEN_SECRET" not in env and "AUTHSVC_PASSWORD_PEPPER" not in env


@pytest.mark.parametrize("name", ["migrate", "app"])
def test_commands_are_real_subcommands(compose, name):
    parser = cli._parser()
    for argv in _authsvc_commands(compose["services"][name]):
        assert argv[0] == "authsvc"
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown command or option


def test_migrate_creates_secrets_before_migrating(compose):
    commands = [argv[1:] for argv in _authsvc_commands(compose["services"]["migrate"])]
    assert [argv[0] for argv in commands] == ["secrets", "migrate"]
    assert commands[0] == ["secrets", "init"]


def test_migrate_waits_for_a_database_not_up_yet(compose):
    (argv,) = [argv for argv in _authsvc_commands(compose["services"]["migrate"]) if argv[1] == "migrate"]
    wait = cli._parser().parse_args(argv[1:]).wait
    # Longer than a restart of the database takes, short enough to fail a broken stack soon.
    assert 10 <= wait <= 300, wait


def test_db_healthcheck_asks_over_tcp_as_the_app_connects(compose):
    db = compose["services"]["db"]
    kind, command = db["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    argv = shlex.split(command)
    assert argv[0] == "pg_isready"
    options = dict(zip(argv[1::2], argv[2::2]))
    # A TCP address, not a socket directory: the image's initialisation runs a server on
    # the socket alone, which is up (and "ready") before the real one listens.
    assert ipaddress.ip_address(options["-h"]).is_loopback
    url = urllib.parse.urlsplit(config.from_env(_env(compose["services"]["migrate"])).database_url)
    assert options.get("-p", "5432") == str(url.port or 5432)
    assert options["-U"] == url.username == db["environment"]["POSTGRES_USER"]
    assert options["-d"] == url.path.lstrip("/") == db["environment"]["POSTGRES_DB"]


def test_app_listens_where_the_proxy_sends_and_does_not_migrate(compose):
    app = compose["services"]["app"]
    args = cli._parser().parse_args(app["command"][1:])
    assert args.host == "0.0.0.0"
    assert str(args.port) in [str(p) for p in app["expose"]]
    assert config.from_env(_env(app)).migrate_on_start is False
    upstream = urllib.parse.urlsplit(_one(_directives(), "set", "location /")[1])
    assert (upstream.hostname, upstream.port) == ("app", args.port)


def test_only_the_proxy_publishes_a_port(compose):
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"proxy"}
    (port,) = compose["services"]["proxy"]["ports"]
    assert port.startswith("127.0.0.1:"), "a local stack: loopback only"
    assert port.rsplit(":", 1)[-1] == _one(_directives(), "listen", "server")[0]


def _subnet(compose: dict[str, Any]) -> ipaddress.IPv4Network:
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    return ipaddress.ip_network(pool["subnet"])


def test_the_proxy_and_only_the_proxy_is_trusted(compose):
    subnet = _subnet(compose)
    proxy_ip = ipaddress.ip_address(compose["services"]["proxy"]["networks"]["default"]["ipv4_address"])
    assert proxy_ip in subnet
    trusted = config.from_env(_env(compose["services"]["app"])).trusted_proxies
    assert trusted and all(net.subnet_of(subnet) for net in trusted)  # type: ignore[arg-type]
    assert any(proxy_ip in net for net in trusted)
    # Not the gateway (the subnet's first address), where published-port traffic comes from:
    # trusting it would let a client put any address in X-Forwarded-For and be believed.
    assert not any(next(subnet.hosts()) in net for net in trusted)


def test_stop_grace_outlasts_the_shutdown_deadline(compose):
    app = compose["services"]["app"]
    grace = app["stop_grace_period"]
    assert grace.endswith("s")
    # aiohttp waits the deadline for requests in flight, then up to as long again once cancelled.
    assert int(grace[:-1]) > 2 * config.from_env(_env(app)).shutdown_timeout


# --- deploy/nginx.conf ---

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def _directives() -> list[tuple[str, str, list[str]]]:
    """(enclosing block, directive, arguments) for every directive of the nginx config."""
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    found: list[tuple[str, str, list[str]]] = []
    blocks: list[str] = []
    # Quoted strings (a JSON log_format) may hold braces and semicolons of their own.
    for token in re.findall(r"""(?:'[^']*'|"[^"]*"|[^;{}'"])+[;{]|}""", text):
        if token == "}":
            blocks.pop()
            continue
        words = shlex.split(token[:-1], posix=False)  # quotes kept, as nginx names `""` in a map
        if token.endswith("{"):
            blocks.append(" ".join(words))
        else:
            found.append((blocks[-1] if blocks else "main", words[0], words[1:]))
    return found


def _all(directives: list[tuple[str, str, list[str]]], name: str, block: str | None = None) -> list[list[str]]:
    return [args for where, what, args in directives if what == name and (block is None or where == block)]


def _one(directives: list[tuple[str, str, list[str]]], name: str, block: str | None = None) -> list[str]:
    (args,) = _all(directives, name, block)
    return args


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1].lower() in units else int(text)


def _seconds(text: str) -> int:
    return int(text[:-1]) * {"s": 1, "m": 60}[text[-1]]


def test_nginx_config_is_the_one_the_proxy_mounts(compose):
    mounts = compose["services"]["proxy"]["volumes"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts
    assert NGINX_CONF.exists()


def test_proxy_passes_client_address_scheme_and_request_id():
    d = _directives()
    headers = {args[0].lower(): " ".join(args[1:]) for args in _all(d, "proxy_set_header", "location /")}
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    # The caller's X-Request-ID when present, else nginx's $request_id.
    variable = headers["x-request-id"]
    block = f"map $http_x_request_id {variable}"
    assert _all(d, '""', block) == [["$request_id"]]
    assert _all(d, "default", block) == [["$http_x_request_id"]]


def test_proxy_never_serves_metrics_to_the_outside(compose):
    d = _directives()
    for block in ("location = /metrics", "location ^~ /metrics/"):
        assert _all(d, "deny", block) == [["all"]], block
    # And authsvc itself refuses the proxy: its address is outside the metrics networks,
    # while the addresses containers are given (the ip_range) are inside them.
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    containers = ipaddress.ip_network(pool["ip_range"])
    proxy_ip = ipaddress.ip_address(compose["services"]["proxy"]["networks"]["default"]["ipv4_address"])
    allowed = config.from_env(_env(compose["services"]["app"])).metrics_networks
    assert proxy_ip not in containers and not any(proxy_ip in net for net in allowed)
    assert any(containers.subnet_of(net) for net in allowed)  # type: ignore[arg-type]


def test_proxy_logs_no_query_string_and_keeps_error_lines_to_crit():
    d = _directives()
    (fmt,) = [args for args in _all(d, "log_format") if args[0] == "refused"]
    assert "$uri" in fmt[-1] and "$request " not in fmt[-1] + " " and "$args" not in fmt[-1]
    assert "$request_uri" not in fmt[-1]
    assert _one(d, "error_log") == ["stderr", "crit"]
    assert all(args[0] == "off" or args[1] == "refused" for args in _all(d, "access_log"))


def test_proxy_limits_agree_with_the_app(compose):
    d = _directives()
    settings = config.from_env(_env(compose["services"]["app"]))
    assert _size(_one(d, "client_max_body_size")[0]) == settings.max_body_bytes
    _, size = _one(d, "large_client_header_buffers")
    assert _size(size) >= app_module.MAX_FIELD_SIZE, "nginx must not refuse what authsvc accepts"
    assert _seconds(_one(d, "client_body_timeout")[0]) <= settings.idle_timeout
    # A login may wait out the longest backoff before it answers: the proxy must wait longer.
    assert _seconds(_one(d, "proxy_read_timeout")[0]) > settings.login_backoff_max_ms / 1000
    assert "non_idempotent" not in _one(d, "proxy_next_upstream"), "a login must never be sent twice"


def test_nginx_accepts_the_config(tmp_path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light to check the config with nginx -t)")
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_builds_what_compose_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY migrations" in dockerfile and "pip install" in dockerfile
    assert "[embedded]" not in dockerfile, "images carry no database server"
    assert "USER authsvc" in dockerfile
    assert "AUTHSVC_DATA_DIR=/data" in dockerfile


# --- .dockerignore: the build context ---


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's patternmatcher reads it: `**` spans directories,
    `*` and `?` stop at a `/`. (No classes or escapes: the file keeps to these.)"""
    assert "[" not in text and "\\" not in text, f"{text}: a pattern this check cannot read"
    regex = ""
    for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]", text):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token) or re.escape(token)
    return re.compile(regex + r"\Z")


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(exception, pattern) for each line of .dockerignore, in order."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            exception = line.startswith("!")
            rules.append((exception, _pattern(posixpath.normpath(line.removeprefix("!").strip()).lstrip("/"))))
    return rules


def _excluded(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parent
    directories, decides; an exception (`!`) lets it back in."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, pattern in rules:
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not exception
    return excluded


def _copied() -> list[str]:
    """The context paths the Dockerfile's COPY (and ADD) lines take."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [word for word in words[1:] if not word.startswith("--")]
            sources += [posixpath.normpath(arg) for arg in args[:-1]]
    return sources


def test_the_build_context_is_what_the_dockerfile_copies():
    rules, copied = _dockerignore(), _copied()
    assert copied, "the Dockerfile copies something"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    for path in tracked:
        needed = any(path == source or path.startswith(source + "/") for source in copied)
        assert _excluded(rules, path) is not needed, f"{path}: {'left out' if needed else 'sent'}"
    # And whatever else lies in this checkout (a virtualenv, caches, a local run's data dir).
    for entry in ROOT.iterdir():
        if entry.name not in copied:
            assert _excluded(rules, entry.name), entry.name


def test_the_build_context_carries_no_secret_and_no_virtualenv():
    rules = _dockerignore()
    settings = config.Settings()  # a local run keeps its data in ./.authsvc
    private = [
        *(secretfiles.secret_path(settings.data_dir, name) for name in secretfiles.SECRET_NAMES),
        settings.keys_file,
        settings.data_dir / "pgdata" / "PG_VERSION",  # the embedded database (embedded.start)
    ]
    for path in private:
        assert _excluded(rules, path.as_posix()), path
        assert _excluded(rules, f"authsvc/{path.as_posix()}"), f"a serve run from authsvc/: {path}"
    for path in (".venv/bin/python", ".git/config", "authsvc/__pycache__/app.cpython-311.pyc"):
        assert _excluded(rules, path), path
