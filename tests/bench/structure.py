"""Files, lines, the largest files and the longest functions of pipeline/, stages/ and labeling/ in a checkout (for
before/after tables).

    .venv/bin/python tests/bench/structure.py CHECKOUT_DIR [CHECKOUT_DIR ...]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("pipeline", "stages", "labeling")


def stats(root: Path, package: str) -> dict:
    files = sorted((root / package).rglob("*.py"))
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in files), reverse=True)
    functions = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
    functions.sort(reverse=True)
    return {"files": len(files), "lines": sum(n for n, _ in sizes), "largest": sizes[:3], "longest": functions[:3]}


def main(roots: list[str]) -> None:
    print("| checkout | package | files | lines | largest files | longest functions |")
    print("|---|---|---|---|---|---|")
    for root in map(Path, roots):
        for package in PACKAGES:
            s = stats(root, package)
            largest = ", ".join(f"{name} ({n})" for n, name in s["largest"])
            longest = ", ".join(f"{name} ({n})" for n, name in s["longest"])
            print(f"| {root} | {package} | {s['files']} | {s['lines']} | {largest} | {longest} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])
