"""Exact-resume state for chatsmith's own training loops (pretrain, PPO).

`resume/` holds what an interrupted stage needs to continue bit-for-bit: model weights
(safetensors), optimizer and scheduler states and RNG states (`torch.save`, read back with
`weights_only=True`), and a small JSON of counters (step, position in the data stream). It is
written to `resume.tmp/` and renamed, so a kill during a save leaves the previous save intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def save_training_state(
    resume_dir: str | os.PathLike,
    *,
    models: dict[str, Any],
    optimizers: dict[str, Any],
    schedulers: dict[str, Any],
    counters: dict[str, Any],
) -> None:
    import torch
    from safetensors.torch import save_file

    resume_dir = Path(resume_dir)
    tmp = resume_dir.with_name(resume_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, model in models.items():
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(_untie(state), tmp / f"{name}.safetensors")
    torch.save(
        {
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        },
        tmp / "state.pt",
    )
    (tmp / "counters.json").write_text(json.dumps(counters, indent=2) + "\n")
    old = resume_dir.with_name(resume_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if resume_dir.exists():
        resume_dir.rename(old)
    tmp.rename(resume_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(
    resume_dir: str | os.PathLike,
    *,
    models: dict[str, Any],
    optimizers: dict[str, Any],
    schedulers: dict[str, Any],
) -> dict[str, Any] | None:
    """Restore into the given objects; return the counters, or None when there is nothing to resume."""
    import torch
    from safetensors.torch import load_file

    resume_dir = Path(resume_dir)
    if not (resume_dir / "counters.json").exists():
        return None
    for name, model in models.items():
        state = load_file(resume_dir / f"{name}.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise RuntimeError(f"resume state of {name} does not match the model: missing {missing}, unexpected {unexpected}")
    state = torch.load(resume_dir / "state.pt", weights_only=True)
    for k, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][k])
    for k, scheduler in schedulers.items():
        scheduler.load_state_dict(state["schedulers"][k])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return json.loads((resume_dir / "counters.json").read_text())


def _untie(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings): keep the first name."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel():
            continue
        seen[ptr] = k
        out[k] = v
    return out


def _tied_keys(model) -> set[str]:
    state = model.state_dict()
    seen: dict[int, str] = {}
    tied = set()
    for k, v in state.items():
        if v.data_ptr() in seen and v.numel():
            tied.add(k)
        seen.setdefault(v.data_ptr(), k)
    return tied
