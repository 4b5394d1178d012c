"""The package's shape: no import cycle between modules, and the stages of the data path depend only downward.

Built from the modules' own source (every ``import``, module level or inside a function, except type-only imports
under ``if TYPE_CHECKING:``), so a lazy import that goes the wrong way fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "servingbench"

#: The stages of the data path, in dependency order: a module may import only its own stage or earlier ones.
LAYERS = ["contract", "models", "runtime", "adapters", "scenarios", "measure", "results", "records", "deploy",
          "load", "probes", "suite", "testing", "report", "export", "tune", "progress", "cli"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "servers" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """servingbench modules that ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    type_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If) and "TYPE_CHECKING" in ast.unparse(blk.test)
                 for n in ast.walk(blk)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("servingbench")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("servingbench"):
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
            out |= subs or {mod}
            if subs and len(subs) < len(node.names):
                out.add(mod)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if m.startswith(n + "."):  # a package's __init__ importing its own submodules is how packages work
                continue
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_belongs_to_a_stage():
    unplaced = [m for m in _modules() if m != "servingbench" and _layer(m) is None]
    assert not unplaced, f"modules outside the stages {LAYERS}: {unplaced} (add them to a stage)"


def test_stages_depend_only_downward():
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{mod} ({LAYERS[lm]}) imports {d} ({LAYERS[ld]})")
    assert not bad, "imports against the data path's order:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("planted", [("servingbench.contract.types", "servingbench.suite")])
def test_the_cycle_check_can_fail(planted):
    """The check itself: a planted back edge makes a cycle and a layering violation."""
    graph = _graph()
    a, b = planted
    assert a in graph and b in graph
    graph[a] = graph[a] | {b}
    seen, todo = set(), [b]
    while todo:  # b reaches a (suite -> ... -> contract.types), so a -> b closes a cycle
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo += list(graph[n])
    assert a in seen
