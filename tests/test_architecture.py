"""The shape of the code, checked: a pure core that imports without aiohttp, no import
cycle among bridge/ modules, and no long module without a word on why it is one concept.

See docs/architecture.md for the map these checks keep true.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "bridge"

# The product's rules: plain functions and objects over bytes, dicts and a given time.
PURE = (
    "bridge.answers",
    "bridge.bulk",
    "bridge.claims",
    "bridge.config",
    "bridge.followups",
    "bridge.lease",
    "bridge.metrics",
    "bridge.models",
    "bridge.pacing",
    "bridge.pauses",
    "bridge.retry",
    "bridge.rules",
    "bridge.rules.compiled",
    "bridge.rules.compiler",
    "bridge.rules.evaluator",
    "bridge.rules.paths",
    "bridge.rules.sandbox",
    "bridge.sources",
    "bridge.store.base",
)
IO_LIBRARIES = ("aiohttp", "asyncpg")
LONG_MODULE = 350  # lines; a longer module says why it is one concept ("One concept: ...")

BLOCKER = """
import importlib, importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Blocked())
for module in {modules!r}:
    importlib.import_module(module)
import pkgutil, bridge.sources
for info in pkgutil.iter_modules(bridge.sources.__path__, "bridge.sources."):
    importlib.import_module(info.name)
print("imported")
"""


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(BRIDGE.rglob("*.py")):
        if "shipped" in path.relative_to(BRIDGE).parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The bridge modules `name` imports anywhere in its body (functions included), less
    its own packages (always initialised before it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return (found & set(known)) - ancestors - {name}


def test_the_pure_core_imports_without_aiohttp_or_asyncpg() -> None:
    # A fresh interpreter: this one has aiohttp loaded already.
    script = BLOCKER.format(blocked=IO_LIBRARIES, modules=PURE)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_the_import_blocker_does_block() -> None:
    # The check above could pass by blocking nothing: voxys.py needs aiohttp and must fail.
    script = BLOCKER.format(blocked=IO_LIBRARIES, modules=("bridge.voxys",))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "blocked: aiohttp" in result.stderr


def test_no_import_cycle_among_bridge_modules() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append([*trail[trail.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_cycle_finder_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text("def f():\n    from bridge.b import x\n")
    known = {"bridge.a": path, "bridge.b": path}
    assert imports("bridge.a", path, known) == {"bridge.b"}


def long_modules() -> list[str]:
    return [n for n, p in modules().items() if p.read_text().count("\n") > LONG_MODULE]


@pytest.mark.parametrize("name", long_modules())
def test_a_long_module_says_why_it_is_one_concept(name: str) -> None:
    path = modules()[name]
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "One concept:" in docstring, f"{path.relative_to(ROOT)}: over {LONG_MODULE} lines"
