"""`DIR/manifest.json`: per stage its status, times, inputs (paths + sha256), output, metrics.

The lineage of every checkpoint back to its data: a stage's inputs include its parent checkpoint
with its hash, and the data files with theirs. Written atomically after every change.

Hashes are remembered with the names, sizes and modification times of the files they cover
(`hashes` in manifest.json): a no-op re-run stats the inputs instead of reading them again (a
checkpoint of a 7B model is 15 GB to hash). Any change of size or time re-hashes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from stages.checkpoint import sha256_path
from stages.common import write_json_atomic


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _stamp(path: Path) -> list:
    """What a remembered hash of `path` is valid for: its files' names, sizes and modification times."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns] for f in files]


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.data.setdefault("stages", {})
        self.data.setdefault("hashes", {})

    def sha256(self, path: str | Path) -> str | None:
        """sha256 of a file or checkpoint dir (`stages.checkpoint.sha256_path`), re-read only when it changed."""
        path = Path(path)
        if not path.exists():
            return None
        stamp = _stamp(path)
        known = self.data["hashes"].get(str(path))
        if known and known["stamp"] == stamp:
            return known["sha256"]
        digest = sha256_path(path)
        self.data["hashes"][str(path)] = {"stamp": stamp, "sha256": digest}
        return digest

    def entry(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_current(self, name: str, *, config_sha: str, inputs: dict[str, str]) -> tuple[bool, str]:
        """Whether a stage is done with this config and these inputs; if not, why it must run."""
        entry = self.entry(name)
        if not entry:
            return False, "never run"
        if entry.get("status") != "done":
            return False, f"status is {entry.get('status')!r}"
        if entry.get("config_sha256") != config_sha:
            return False, "its config changed"
        old = {k: v.get("sha256") for k, v in entry.get("inputs", {}).items()}
        new = {k: self.sha256(p) for k, p in inputs.items()}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            return False, f"inputs changed: {', '.join(changed)}"
        if not Path(entry.get("output", "")).exists():
            return False, "its output is missing"
        return True, "done"

    def start(self, name: str, *, config_sha: str, inputs: dict[str, str], output: str, reason: str) -> None:
        self.data["stages"][name] = {
            "status": "running",
            "reason": reason,
            "started": now(),
            "config_sha256": config_sha,
            "inputs": {k: {"path": str(p), "sha256": self.sha256(p)} for k, p in inputs.items()},
            "output": output,
        }
        self.save()

    def finish(self, name: str, *, metrics: dict[str, Any], output_sha: str | None = None, seconds: float | None = None) -> None:
        """`seconds` (wall time) lives here, not in the stage's eval.json: the same recipe, seed and
        machine give identical eval.json files."""
        entry = self.data["stages"][name]
        entry.update(status="done", finished=now(), metrics=metrics)
        if seconds is not None:
            entry["seconds"] = seconds
        if output_sha:
            entry["output_sha256"] = output_sha
        entry.pop("error", None)
        self.save()

    def fail(self, name: str, *, error: str, log: str | None = None) -> None:
        entry = self.data["stages"].setdefault(name, {})
        entry.update(status="failed", finished=now(), error=error)
        if log:
            entry["log"] = log
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)
