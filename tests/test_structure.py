"""The package's shape: modules import only downwards, and functions stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "musictag"
# top to bottom; a module may import from its own layer or any below it, never from one above
LAYERS = [
    {"cli", "api", "__main__"},
    {"scan", "train", "evaluate", "modelcard", "export", "finetuning", "parquet"},
    {"pipeline", "ray_engine", "library", "library_labels", "metrics", "manifest", "cache", "inference", "distill",
     "config", "writepool"},
    {"audio", "features", "model", "checkpoint", "modelfile", "db", "tags", "codec", "errors", "defaults",
     "progress", "vocabulary", "ownership", "__init__"},
]
LAYER = {module: depth for depth, modules in enumerate(LAYERS) for module in modules}
MAX_FUNCTION_LINES = 60


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text())


def _imported(tree: ast.Module) -> set[str]:
    """Package modules imported anywhere in the file (inside functions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("musictag."):
            found.add(node.module.split(".")[1])
    return {m.split(".")[0] if m else "__init__" for m in found}


def test_every_module_has_a_layer():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in LAYER) == []


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [f"{module} imports {other}" for module in LAYER for other in _imported(_tree(module))
              if other in LAYER and LAYER[other] < LAYER[module]]
    assert not upward


def test_scan_and_train_are_used_only_by_the_cli_and_api():
    users = {module for module in LAYER if {"scan", "train"} & _imported(_tree(module))}
    assert users <= {"cli", "api"}


def test_no_function_is_longer_than_it_can_be_read():
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for module in LAYER
            for node in ast.walk(_tree(module)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long
