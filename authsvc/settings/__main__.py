"""`python -m authsvc.settings`: print the settings table; `--write FILE`: rewrite it in FILE."""

from __future__ import annotations

import argparse
from pathlib import Path

from authsvc.settings import table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authsvc.settings", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="FILE", help="replace the table between its markers in FILE")
    args = parser.parse_args(argv)
    if args.write is None:
        print(table.table())
        return
    try:
        document = table.with_table(args.write.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: {args.write}: {exc}\n")
    args.write.write_text(document, encoding="utf-8")


if __name__ == "__main__":
    main()
