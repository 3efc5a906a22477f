"""The package's shape: rooms (subpackages) import only downwards, and modules, classes and functions stay
small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "musictag"
# rooms from the bottom up; a module may import from its own room or any room on a lower floor, never from
# one on its own floor or above ("" is the ground floor: musictag's top-level modules but the facades)
FLOORS = [
    {""},
    {"tagfile", "store", "model"},
    {"engines"},
    {"scan", "learn", "similar"},
    {"api"},
    {"cli"},
    {"__main__"},
]
FLOOR = {room: depth for depth, rooms in enumerate(FLOORS) for room in rooms}
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200
MAX_MODULE_LINES = 450
MAX_TOP_LEVEL_MODULES = 8


def _modules() -> dict[str, Path]:
    """Dotted name under musictag ("scan.scanner", "defaults", "cli" for cli/__init__.py) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _room(module: str) -> str:
    """The room a module lives in: its subpackage, or its own name for the facades at the top."""
    if "." in module or (PACKAGE / module).is_dir():
        return module.split(".")[0]
    return module if module in FLOOR else ""


def _imported(module: str, path: Path) -> set[str]:
    """Package modules imported anywhere in the file (inside functions too), as dotted names."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if "." not in module and path.name != "__init__.py":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            found |= {".".join(target)} if node.module else {".".join([*target, a.name]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("musictag."):
            found.add(node.module[len("musictag."):])
    return {name for name in found if name and name != "__version__" and not name.endswith(".__version__")}


def test_every_room_has_a_floor_and_the_top_holds_few_modules():
    modules = _modules()
    rooms = {_room(m) for m in modules if m != "__init__"}
    assert sorted(r for r in rooms if r not in FLOOR) == []
    assert len([m for m in modules if (PACKAGE / m).is_dir()]) >= 4
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(p.name for p in top)


def test_every_module_imports_only_its_own_room_or_lower_floors():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        room = _room(module)
        for other in _imported(module, path):
            other_room = _room(other) if other else ""
            if other_room != room and FLOOR.get(other_room, 0) >= FLOOR[room] and other_room != "":
                upward.append(f"{module} imports {other}")
            elif other_room == "" and room == "" and other in FLOOR:
                upward.append(f"{module} imports {other}")
    assert not upward


def test_scanning_and_learning_are_used_only_by_the_facade_and_the_cli():
    users = {_room(m) for m, p in _modules().items() if {"scan", "learn"} & {_room(o) for o in _imported(m, p)}}
    assert users <= {"scan", "learn", "api", "cli"}


def test_no_module_class_or_function_is_longer_than_it_can_be_read():
    too_long = []
    for module, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                too_long.append(f"{module}.{node.name}: {lines} lines")
            elif isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                too_long.append(f"class {module}.{node.name}: {lines} lines")
    assert not too_long


def test_every_room_is_a_package_the_wheel_ships():
    """pyproject.toml lists the packages (weights/ is mapped into one): a room missing there installs
    without it, and only a clean install (CI, pipx) would tell."""
    import re

    listed = set(re.findall(r'"(musictag(?:\.[a-z_]+)?)"', (PACKAGE.parent / "pyproject.toml").read_text()))
    rooms = {f"musictag.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert rooms <= listed, sorted(rooms - listed)
