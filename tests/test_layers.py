"""The dependency direction of DESIGN.md: proxy -> storage -> enforcement -> config, and
each outside library kept inside the packages that own it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import spendgate

ROOT = Path(spendgate.__file__).parent
# package -> the packages of ours it may import
ALLOWED = {
    "config": {"config", "types"},
    "enforcement": {"enforcement", "config", "types"},
    "storage": {"storage", "enforcement", "config", "types"},
    "proxy": {"proxy", "storage", "enforcement", "config", "types", "dashboard"},
    # The API Keys page: static assets and the routes serving them; a client of the admin
    # API over HTTP, so it imports nothing of ours.
    "dashboard": {"dashboard"},
}
# outside library -> the only packages that may import it
OWNED = {"aiohttp": {"proxy", "dashboard"}, "redis": {"storage"}, "asyncpg": {"storage"}}


def modules() -> list[str]:
    found = pkgutil.walk_packages([str(ROOT)], prefix="spendgate.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downward(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "spendgate" and len(parts) > 1:
                assert parts[1] in ALLOWED[package], f"{path.name} imports {name}"
            if parts[0] in OWNED:
                assert package in OWNED[parts[0]], f"{path.name} imports {name}"


def test_the_walk_sees_every_layer() -> None:
    found = {name.split(".")[1] for name in modules()}
    assert set(ALLOWED) <= found


@pytest.mark.parametrize("module", modules())
def test_every_module_imports_on_its_own(module: str) -> None:
    importlib.import_module(module)
