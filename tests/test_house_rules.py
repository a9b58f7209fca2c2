"""The house's size bounds, checked on every test run so that they cannot be broken silently:
no module over 500 lines and no class over 300 in the layers (docs/architecture.md). A file
that grows past them is split into modules with one job each, not exempted here."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "store", "ingest", "api", "tickvault")
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def _modules() -> list[Path]:
    return sorted(path for layer in LAYERS for path in (REPO / layer).rglob("*.py"))


def test_the_layers_have_modules_to_check() -> None:
    # A moved folder would leave the bounds below checking nothing.
    assert len(_modules()) > 100


def test_no_module_is_over_500_lines() -> None:
    too_long = {
        str(path.relative_to(REPO)): lines
        for path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"split these modules (lines): {too_long}"


def test_no_class_is_over_300_lines() -> None:
    too_long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                span = (node.end_lineno or node.lineno) - start + 1
                if span > MAX_CLASS_LINES:
                    too_long[f"{path.relative_to(REPO)}:{node.name}"] = span
    assert too_long == {}, f"split these classes (lines): {too_long}"
