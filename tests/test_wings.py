"""The package's wings (issue #31): every import of every module, read with ``ast`` (lazy ones in
functions included), goes only to a wing the README's map allows, and no modules import each other
in a circle. The map is read from the README, so it cannot drift from the code."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders installed under dynamicid_rt (pyproject's package-dir) and their package names.
PACKAGE_DIRS = {"dynamicid_rt": "dynamicid_rt", "export": "dynamicid_rt.export", "engines": "dynamicid_rt.engines",
                "desktop": "dynamicid_rt.desktop"}


def wing_map() -> dict[str, set[str]]:
    """README's Layout table: wing -> the wings it may import."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("| wing | what lives there | may import |"):]
    allowed: dict[str, set[str]] = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        wings = [w.rstrip("/") for w in re.findall(r"`([^`]+)`", cells[0]) if not w.endswith(".py")]
        may = set() if cells[-1] == "nothing of ours" else {w.rstrip("/") for w in re.findall(r"`([^`]+)`", cells[-1])}
        for wing in wings:
            allowed[wing] = may
    return allowed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = PACKAGE_DIRS[parts[0]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(".".join(parts).split("."))


def wing_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dynamicid_rt"


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:``: names for annotations, never run."""
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            nodes.update(n for stmt in node.body for n in ast.walk(stmt))
    return nodes


def imports_of(path: Path, runtime_only: bool = False) -> set[str]:
    """Our modules a file imports, absolute; ``from X import name`` counts X.name where that is a module.
    ``runtime_only``: leave out the imports made for type annotations alone."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dynamicid_rt":
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dynamicid_rt")
    return {m for m in found if m in MODULES}


FILES = {module_name(p): p for top in PACKAGE_DIRS for p in (ROOT / top).rglob("*.py")}
MODULES = set(FILES)


def test_the_map_names_every_wing_and_is_itself_without_circles():
    allowed = wing_map()
    assert {wing_of(m) for m in MODULES} <= set(allowed), "a wing is missing from the README's map"
    done: set[str] = set()

    def visit(wing: str, path: tuple[str, ...]) -> None:
        assert wing not in path, f"the map has a circle: {' -> '.join(path + (wing,))}"
        if wing not in done:
            for lower in allowed[wing]:
                visit(lower, path + (wing,))
            done.add(wing)

    for wing in allowed:
        visit(wing, ())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_what_its_wing_may(module):
    allowed = wing_map()
    wing = wing_of(module)
    wrong = sorted(t for t in imports_of(FILES[module])
                   if wing_of(t) != wing and wing_of(t) not in allowed[wing] and t != "dynamicid_rt" or
                   (t == "dynamicid_rt" and wing != "dynamicid_rt" and "dynamicid_rt" not in allowed[wing]))
    assert not wrong, f"{module} ({wing}/) imports {wrong}, which the README's map does not allow {wing}/"


def test_no_modules_import_each_other_in_a_circle():
    # Imports for annotations alone (``if TYPE_CHECKING:``) are not circles: they never run.
    graph = {m: {t for t in imports_of(FILES[m], runtime_only=True) if t != m and not m.startswith(t + ".")} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circle = stack[stack.index(t):] + [t]
                pytest.fail(f"import circle: {' -> '.join(circle)}")
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_each_wing_says_what_lives_there():
    for package, path in FILES.items():
        if path.name == "__init__.py" and package.count(".") == 1:
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{package} has no docstring"
