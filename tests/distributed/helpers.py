"""Helpers of the distributed tests: the real CLI in a subprocess (optionally its own process group,
so a test can kill -9 a launcher and all its ranks at once, as a pre-empted job is killed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from tiny import DEMO, REPO, TINY, env  # noqa: E402


def free_port() -> int:
    """A loopback port with its neighbour free too (launch coordination uses port + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1")


def cli_env(**extra) -> dict:
    return {**env(), **{k: str(v) for k, v in extra.items()}}


def cli(*args, timeout=900, check=True, extra_env=None):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env=cli_env(**(extra_env or {})),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"chatsmith {' '.join(map(str, args))} exited {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def start(*args, extra_env=None, log: Path | None = None) -> subprocess.Popen:
    """The CLI in its own session (process group): `kill_group` reaches the launcher and every rank."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO,
                            env=cli_env(**(extra_env or {})), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_until_killed_after_save(*args, save: int, log: Path, launched: bool, timeout=900) -> None:
    """Run the CLI with the stages' test kill point set (`stages.checkpoint.KILL_AFTER_SAVE_ENV`): right after its
    `save`-th save of resume state, every process of the stage SIGKILLs itself. Deterministic: no polling, no race
    with the next save. A stage in the CLI's own process dies with the CLI (exit -9); a `launched` one's ranks die
    and the CLI reports the stage failed (exit 1)."""
    from stages.checkpoint import KILL_AFTER_SAVE_ENV

    proc = start(*args, extra_env={KILL_AFTER_SAVE_ENV: save}, log=log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert code == (1 if launched else -signal.SIGKILL), f"the stage was not killed at save {save} (exit {code}):\n{output[-3000:]}"
    if launched:
        assert "Signal 9 (SIGKILL)" in output, output[-3000:]  # the launcher saw its ranks killed, not another error
    time.sleep(0.5)  # let the killed ranks' sockets close before the re-run binds the same ports


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def assert_equal_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def losses(path: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (path / "metrics.jsonl").read_text().splitlines() if key in json.loads(line)]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]
