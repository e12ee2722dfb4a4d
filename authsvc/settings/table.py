"""docs/settings.md's table of settings, generated from the declarations in ``Settings``.

The prose around the table is written by hand; the rows between the two markers are not.
Regenerate them with ``python -m authsvc.settings --write docs/settings.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from authsvc.settings import DECLARATIONS, Settings, env_name

REGENERATE = "python -m authsvc.settings --write docs/settings.md"
BEGIN = f"<!-- generated from authsvc/settings: edit the declarations, then run {REGENERATE} -->"
END = "<!-- end of the generated table -->"
HEADER = "| variable | default | meaning |\n|---|---|---|"


def _default(name: str) -> str:
    declared = DECLARATIONS[name]
    if declared.default_doc is not None:
        return declared.default_doc
    value: Any = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def table() -> str:
    """The Markdown table: one row per setting, in declaration order."""
    rows = []
    for name, declared in DECLARATIONS.items():
        cells = (f"`{env_name(name)}`", _default(name), declared.doc)
        assert not any("|" in cell for cell in cells), f"{name}: a '|' would split the table's cell"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([HEADER, *rows])


def with_table(document: str) -> str:
    """The document with the text between the markers replaced by the current table."""
    before, begin, rest = document.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the markers of the generated table are missing: {BEGIN} ... {END}")
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"
