"""The package's layers, read from its source: no import cycles, a core without I/O, and a
simulator package that can be imported without its server libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bridge

ROOT = Path(bridge.__file__).parent
#: Cycles known and not yet broken, each with what breaks it. A new cycle fails the test; so
#: does one listed here once it is gone (then take it off the list).
KNOWN_CYCLES: list[list[str]] = []
#: Libraries that do I/O or serve HTTP: the core decides, the edges use these.
IO_LIBRARIES = {"anyio", "httpx", "redis", "starlette", "uvicorn", "websockets", "structlog"}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (``TYPE_CHECKING`` and function-level
    imports included: a cycle through them is still a cycle in the design).

    ``from pkg import sub`` names the submodule ``pkg.sub``, not the package ``pkg``.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            out.update(s for s in subs if s in known)
            if not all(s in known for s in subs):
                out.add(node.module)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_finds_a_cycle() -> None:  # the checker itself, on a known graph
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    known = modules()
    graph = {name: imports(path, known) & known.keys() - {name} for name, path in known.items()}
    found = cycles(graph)
    assert [c for c in found if c not in KNOWN_CYCLES] == []
    assert [c for c in KNOWN_CYCLES if c not in found] == [], "gone: take it off KNOWN_CYCLES"


def test_core_imports_only_the_core_and_no_io_library() -> None:
    known = modules()
    for name, path in known.items():
        if not name.startswith("bridge.core"):
            continue
        for target in imports(path, known):
            top = target.split(".")[0]
            assert top not in IO_LIBRARIES, f"{name} imports {target}"
            if top == "bridge":
                assert target.startswith("bridge.core"), f"{name} imports {target}"


def test_simulator_package_imports_without_its_server_libraries() -> None:
    pure = ["scenarios", "orders", "tokens", "signing", "sse", "bus", "variants", "errors"]
    code = (
        "import sys, bridge.simulator\n"
        + "".join(f"import bridge.simulator.{m}\n" for m in pure)
        + "print(sorted({m.split('.')[0] for m in sys.modules} & {'uvicorn', 'starlette'}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
    lazy = subprocess.run(
        [sys.executable, "-c", "from bridge.simulator import SimulatorServer; print('ok')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lazy.stdout.strip() == "ok", lazy.stderr
