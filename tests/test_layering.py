"""Imports follow the layers of DESIGN.md: features never import each other; only
`pipeline` joins them; `api` sits on top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(),
    "audit": {"core"},
    "generation": {"core", "audit"},
    "reference_index": {"core", "audit"},
    "review": {"core", "audit"},
    "pipeline": {"core", "audit", "generation", "reference_index", "review"},
    "api": {"core", "audit", "generation", "reference_index", "review", "pipeline", "migrations"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_crosses_a_layer() -> None:
    ours = set(ALLOWED) | {"migrations"}
    crossings = [
        f"{path.relative_to(ROOT)} imports {package}"
        for layer, allowed in ALLOWED.items()
        for path in sorted((ROOT / layer).rglob("*.py"))
        for package in imported_packages(path) & ours
        if package != layer and package not in allowed
    ]
    assert crossings == []
