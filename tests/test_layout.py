"""The layout shows the architecture (../shared/DESIGN.md): imports point down the package table, and no
module grows past 500 lines. Read from the source, so a change that breaks either fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "sluice"
DOMAIN = {"core", "identity", "limits", "routing", "guard", "policy", "audit", "upstream", "telemetry", "memory", "cache", "batches"}
# package -> the packages of ours it may import (DESIGN.md's table)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "store": {"core"}, "sim": {"core"}, "telemetry": {"core"}, "upstream": {"core"}, "guard": {"core"},
    "routing": {"core"}, "limits": {"core"}, "http": {"core"}, "wire": {"core"},
    "identity": {"core", "store"}, "cache": {"core", "store"}, "audit": {"core", "store"}, "memory": {"core", "store"}, "batches": {"core", "store", "identity"}, "workers": {"core", "telemetry"},
    "mcp": {"core", "store", "guard", "identity", "upstream"},  # upstream: the connection pool of its HTTP client
    "policy": {"core", "store", "audit", "routing", "limits", "guard", "cache"},  # issue 27: the cache section's rules
    "pipeline": DOMAIN | {"wire"},  # the client APIs' adapters decode into, and encode out of, its one path
    "admin": DOMAIN | {"store", "mcp"},  # issue 25: the MCP servers, tools and pins
}
MAX_LINES = 500


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The top-level packages of ours a module imports (relative imports, resolved; anywhere in it)."""
    here = list(path.relative_to(ROOT).parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                full = [p for p in [*base, *(node.module or "").split(".")] if p]
            elif (node.module or "").startswith("sluice."):
                full = node.module.split(".")[1:]  # type: ignore[union-attr]
            else:
                continue
            if full:
                out.add(full[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sluice.")}
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_package_table(path: Path):
    pkg = _package(path)
    if pkg not in ALLOWED:  # cli, app, __main__: the composition root may import everything
        return
    wrong = {p for p in _imports(path) if p != pkg} - ALLOWED[pkg]
    assert not wrong, f"{path.relative_to(ROOT)} ({pkg}) imports {sorted(wrong)}; DESIGN.md allows {sorted(ALLOWED[pkg])}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_500_lines(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concern"
