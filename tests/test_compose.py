"""docker-compose.yml and the Dockerfile, checked against the settings and commands the app really has.

There is no Docker engine here, so this keeps the files honest instead of running them.
"""

from __future__ import annotations

import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from authsvc import cli, config

ROOT = Path(__file__).resolve().parent.parent


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
    assert set(services) == {"db", "migrate", "app"}
    assert services["db"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
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
    assert commands == [["secrets", "init"], ["migrate"]]


def test_app_serves_on_the_published_port_and_does_not_migrate(compose):
    app = compose["services"]["app"]
    args = cli._parser().parse_args(app["command"][1:])
    assert args.host == "0.0.0.0"
    published = [p.rsplit(":", 1)[-1] for p in app["ports"]]
    assert str(args.port) in published
    assert config.from_env(_env(app)).migrate_on_start is False


def test_dockerfile_builds_what_compose_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY migrations" in dockerfile and "pip install" in dockerfile
    assert "[embedded]" not in dockerfile, "images carry no database server"
    assert "USER authsvc" in dockerfile
    assert "AUTHSVC_DATA_DIR=/data" in dockerfile
