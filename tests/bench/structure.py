"""Files, lines and the longest functions of stages/ and pipeline/ in a checkout (for before/after tables).

    .venv/bin/python tests/bench/structure.py CHECKOUT_DIR
"""
import ast
import sys
from pathlib import Path
root = Path(sys.argv[1])
def stats(pkg):
    files = sorted(p for p in (root / pkg).rglob("*.py"))
    lines = sum(len(p.read_text().splitlines()) for p in files)
    funcs = []
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((n.end_lineno - n.lineno + 1, f"{p.relative_to(root)}:{n.name}"))
    funcs.sort(reverse=True)
    return len(files), lines, funcs[:3]
for pkg in ("stages", "pipeline"):
    n, l, top = stats(pkg)
    print(f"{pkg}: {n} files, {l} lines; longest: " + ", ".join(f"{name} ({length})" for length, name in top))
for f in ("stages/rlhf/ppo.py", "pipeline/runner.py"):
    print(f, len((root / f).read_text().splitlines()), "lines")
