"""The shape the code promises (issue 8): the PPO stage reads in one sitting, no function in `stages/`
is longer than a screen, and `stages/` modules import each other without a cycle (lazy imports
inside functions count too), so each can be read and loaded on its own."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"
MAX_FUNCTION_LINES = 80
MAX_PPO_LINES = 500


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in STAGES.rglob("*.py")}


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every `stages.*` module this one imports, at the top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def test_ppo_stage_reads_in_one_sitting():
    lines = len((STAGES / "rlhf" / "ppo.py").read_text().splitlines())
    assert lines <= MAX_PPO_LINES, f"stages/rlhf/ppo.py has {lines} lines"


def test_no_function_in_stages_is_longer_than_a_screen():
    long = []
    for path in STAGES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_no_import_cycle_among_stage_modules():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # Packages (`stages`, `stages.rlhf`) are containers: importing `stages.rlhf.ppo` is not importing a sibling.
    graph = {name: {d for d in deps if not modules[d].name == "__init__.py"} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else f"{name} -> {dep}")
            elif not state.get(dep):
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [name])
    assert not cycles, cycles


def test_the_cycle_check_sees_lazy_imports(tmp_path):
    """The checker itself: an import inside a function is an edge of the graph."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from stages.rlhf import ppo\n    import stages.common\n")
    assert _imports("stages.x", path, {"stages.rlhf.ppo", "stages.common", "stages.rlhf"}) == {"stages.rlhf.ppo", "stages.common", "stages.rlhf"}
