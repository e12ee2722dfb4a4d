"""The README is the front door and docs/ the reference: both match the code and each other.

Settings are documented in docs/settings.md's table, commands in docs/operations.md; the
README's test command is what CI runs; every relative link goes somewhere that exists.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

from authsvc import settings as config
from authsvc.cli import main as cli
from authsvc.settings import table as settings_doc

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
SETTINGS_DOC = ROOT / "docs" / "settings.md"
COMMANDS_DOC = ROOT / "docs" / "operations.md"
MARKDOWN = [ROOT / "README.md", *DOCS]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


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
        # AUTHSVC_TEST_* are the test suite's own variables (from_env leaves them alone too).
        documented = {v for v in re.findall(r"`(AUTHSVC_[A-Z_]+)`", path.read_text()) if not v.startswith("AUTHSVC_TEST_")}
        assert documented <= real, f"{path.name} names settings that do not exist: {sorted(documented - real)}"


def test_the_settings_table_is_generated_from_the_declarations():
    text = SETTINGS_DOC.read_text()
    assert text == settings_doc.with_table(text), (
        f"docs/settings.md's table is stale: regenerate it with `{settings_doc.REGENERATE}`"
    )


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


def test_every_command_is_documented():
    commands = COMMANDS_DOC.read_text()
    subparsers = next(a for a in cli._parser()._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        assert f"authsvc {name}" in commands, f"`authsvc {name}` missing from docs/operations.md"
        actions = [a.choices for a in sub._actions if a.dest == "action"]
        for choice in actions[0] if actions else ():
            # one code span may name several: `authsvc keys list | generate | rotate ...`
            assert re.search(rf"authsvc {name}\b[^`]*\b{choice}\b", commands), (
                f"`authsvc {name} {choice}` missing from docs/operations.md"
            )


def test_the_readme_links_every_document():
    for path in DOCS:
        assert f"](docs/{path.name})" in README, f"README.md does not link docs/{path.name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = base = _anchor(match.group(1))
            n = 0
            while anchor in found:  # GitHub numbers repeated headings
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def test_every_relative_link_resolves():
    checked = 0
    for path in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.relative_to(ROOT)}: {target} points to no file"
            if fragment:
                assert linked.suffix == ".md", f"{path.relative_to(ROOT)}: {target}: an anchor in a non-Markdown file"
                assert fragment in _anchors(linked), f"{path.relative_to(ROOT)}: {target}: no such heading"
            checked += 1
    assert checked > 20  # the links were found at all
