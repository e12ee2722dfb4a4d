"""The README is the front door: its settings table and commands match the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from authsvc import settings as config
from authsvc.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    for name in config.FIELDS:
        assert f"`{config.env_name(name)}`" in README, f"{config.env_name(name)} missing from README"


def test_every_documented_setting_exists():
    documented = set(re.findall(r"`(AUTHSVC_[A-Z_]+)`", README)) - {"AUTHSVC_TEST_DATABASE_URL"}
    assert documented <= {config.env_name(name) for name in config.FIELDS}


def test_ci_runs_the_readme_test_command():
    # The same extraction as .ci/run: the line after the marker's code fence.
    extracted = subprocess.run(
        ["awk", "/<!-- test-command -->/ {getline; getline; print; exit}", "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted.endswith("pytest") and "pip install" in extracted


def test_documented_commands_parse():
    parser = cli._parser()
    for argv in (["serve", "--host", "H", "--port", "1"], ["migrate"], ["secrets", "init"]):
        parser.parse_args(argv)
        assert f"authsvc {argv[0]}" in README
