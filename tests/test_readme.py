"""The README is the front door and docs/ the reference: both match the code.

Settings are documented in docs/settings.md's table, commands in docs/operations.md; the
README's test command is what CI runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from authsvc import cli, config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
SETTINGS_DOC = ROOT / "docs" / "settings.md"
COMMANDS_DOC = ROOT / "docs" / "operations.md"
MARKDOWN = [ROOT / "README.md", *DOCS]


def settings_table() -> set[str]:
    """The variables named in the first column of the settings table's rows."""
    names = set()
    for line in SETTINGS_DOC.read_text().splitlines():
        if line.startswith("| `AUTHSVC_"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`(AUTHSVC_[A-Z_]+)`", first_cell))
    return names


def test_every_setting_is_documented():
    documented = settings_table()
    for name in config.FIELDS:
        assert config.env_name(name) in documented, f"{config.env_name(name)} missing from docs/settings.md's table"


def test_every_documented_setting_exists():
    real = {config.env_name(name) for name in config.FIELDS}
    assert settings_table() <= real
    for path in MARKDOWN:
        documented = set(re.findall(r"`(AUTHSVC_[A-Z_]+)`", path.read_text())) - {"AUTHSVC_TEST_DATABASE_URL"}
        assert documented <= real, f"{path.name} names settings that do not exist: {sorted(documented - real)}"


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
    commands = COMMANDS_DOC.read_text()
    parser = cli._parser()
    for argv in (["serve", "--host", "H", "--port", "1"], ["migrate"], ["secrets", "init"]):
        parser.parse_args(argv)
        assert f"authsvc {argv[0]}" in commands
