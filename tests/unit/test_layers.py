"""The layers import only downwards: a reader knows from a module's path what it may touch.

An AST walk over the package (no import is executed); imports under `if TYPE_CHECKING:` are
for annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "authsvc"

# What each layer may import of authsvc (its own layer always). app, appkeys and cli are the
# composition root: they may import anything.
ALLOWED = {
    "errors": set(),
    "settings": {"errors"},
    "observability": {"settings", "errors", "appkeys"},
    "db": {"settings", "errors", "observability", "auth.emails"},  # stored keys: the same rules
    "background": {"db"},
    "auth": {"db", "settings", "errors", "observability", "background"},
    "http": {"auth", "db", "settings", "errors", "observability", "appkeys", "__version__"},
    "verifier": {"auth.jwtcheck", "errors"},  # imported by other services: nothing of ours else
    "client": {"verifier"},  # the verifier's old name
    # The pytest plugin of dependent services: a real authsvc started as a process, its
    # database embedded, and the verifier pointed at it.
    "testing": {"verifier", "db.embedded"},
}
# The domain and the storage know nothing of HTTP.
NO_AIOHTTP = {"errors", "settings", "db", "background", "auth"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (the layers read as absolute paths)"
            # The module or attribute imported: `from authsvc.auth import emails` is auth.emails.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "authsvc"


def _allowed(layer: str, target: str) -> bool:
    inside = target.removeprefix("authsvc.")
    if _layer(target) == layer:
        return True
    return any(inside == rule or inside.startswith(rule + ".") for rule in ALLOWED[layer])


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    module = _module(path)
    layer = _layer(module)
    imports = _imports(path)
    if layer in NO_AIOHTTP:
        assert not {i for i in imports if i.split(".")[0] in ("aiohttp", "aiohttp_cors")}, module
    if layer not in ALLOWED:
        return
    ours = {i for i in imports if i == "authsvc" or i.startswith("authsvc.")}
    wrong = sorted(i for i in ours if not _allowed(layer, i))
    assert wrong == [], f"{module} ({layer}) imports {wrong}"


def test_every_module_is_in_a_known_layer() -> None:
    top = {"app", "appkeys", "cli", "authsvc", "__main__"}
    assert {_layer(_module(p)) for p in MODULES} <= set(ALLOWED) | top


def test_the_verifiers_old_name_still_imports() -> None:
    from authsvc import client, verifier

    assert client.TokenVerifier is verifier.TokenVerifier and client.CLAIMS is verifier.CLAIMS
