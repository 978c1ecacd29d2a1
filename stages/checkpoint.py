"""Checkpoints and resume state: the one module every stage's loop uses to write what it keeps.

- `atomic_directory(path)`: build a directory beside `path` and swap it into place, so a kill never
  leaves a half-written one where a reader would look (used by checkpoints and `resume/`).
- `save_checkpoint`: a Hugging Face checkpoint dir (safetensors, tokenizer with its chat template,
  `chat_format.json`, generation_config.json, `chatsmith.json` with the stage config and its parents).
- `ResumeState`: exact resume of chatsmith's own loops (pretrain, PPO). Without DeepSpeed it writes
  the whole model as safetensors and the optimizer/scheduler/RNG state with `torch.save`, read back
  with `weights_only=True`. Under DeepSpeed it saves and loads through accelerate's
  `save_state`/`load_state`, so each rank keeps its shard of the ZeRO optimizer state.
  DeepSpeed's own loader unpickles with `weights_only=False` (its TorchCheckpointEngine); so every
  save records the sha256 of each file it wrote, and a load refuses any file that does not match:
  only resume state that chatsmith wrote is ever unpickled.
- `merged`: a LoRA adapter merged into its base weights; `make_scheduler`: the LR schedules.
- `after_resume_save`: the tests' kill point (`CHATSMITH_TEST_KILL_AFTER_SAVE`), called after every save of
  resume state, by `ResumeState.save` and by the TRL stages' Trainer callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from stages.chat_format import ChatFormat, write_chat_format
from stages.common import write_json_atomic

RESUME_FORMAT = 2
"""Version of the `resume/` layout; a directory of another version is refused with what to do."""
HASHES_FILE = "hashes.json"
STATE_FILE = "state.json"

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
"""`TrainCommon.lr_scheduler` -> the transformers schedule. Every schedule starts with
`warmup_steps` of linear warm-up (`constant` too)."""


class ResumeError(RuntimeError):
    """Resume state that cannot be used; the message says what to do."""


# ------------------------------------------------------------------------------- the tests' kill point

KILL_AFTER_SAVE_ENV = "CHATSMITH_TEST_KILL_AFTER_SAVE"
"""Test hook, the one place it is defined: with `CHATSMITH_TEST_KILL_AFTER_SAVE=N` in its environment, every process
of a stage SIGKILLs itself right after the stage's N-th save of resume state (counted from 1 in this process:
pretrain and PPO through `ResumeState.save`, the TRL stages through their Trainer callback), once every rank has
finished writing it: a stage run in the CLI's own process dies with it (the manifest still says `running`, as
after a pre-emption); a launched stage's ranks die and the CLI records the stage `failed`. The resume tests use it
instead of racing a kill against the next save. Unset (always, outside the tests), it does nothing."""
_saves_made = 0


def after_resume_save() -> None:
    """Count a completed save of resume state; the test hook above kills the stage at save N. Every rank
    calls it after the save's last barrier, so what is on disk is the whole save N and nothing after it."""
    global _saves_made
    _saves_made += 1
    wanted = os.environ.get(KILL_AFTER_SAVE_ENV)
    if wanted and _saves_made == int(wanted):
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------ hashes


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Hash of a file, or of a directory's files (names + contents, sorted; `resume/`, logs and
    evaluations excluded: they are about the checkpoint, not the checkpoint)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    skipped = {"resume", "tracking"}  # resume state and tracker event files are about the run, not the checkpoint
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not skipped & set(p.relative_to(path).parts)):
        if file.suffix in {".jsonl", ".png"} or file.name in {"eval.json", "metrics.jsonl"}:
            continue
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != HASHES_FILE}


# ------------------------------------------------------------------------------ atomic directories


def _swap_into_place(tmp: Path, path: Path) -> None:
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)  # a kill between the two renames leaves `path.old`, which readers also accept
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield an empty `path.tmp`; when the block ends without an error, swap it into place as `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    _swap_into_place(tmp, path)


# --------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, *, meta: dict[str, Any] | None = None,
                    state_dict: dict | None = None, chat_format: ChatFormat | None = None) -> Path:
    """Write a loadable HF checkpoint atomically. Files already in `out_dir` that are not part of the
    checkpoint (metrics.jsonl, resume/) are kept. `meta` (stage config, parents with hashes) goes to
    `chatsmith.json`. `state_dict`: the whole weights when the model's own are sharded (ZeRO-3).
    `chat_format`: written as `chat_format.json` beside the tokenizer and into the meta (the end-of-turn token
    recorded apart from the document EOS)."""
    out_dir = Path(out_dir)
    # Moved, not copied: resume/ may be large. The old dir is removed once the new one is in place.
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if chat_format is not None:
            write_chat_format(tmp, chat_format)
            meta = {**(meta or {}), "chat_format": chat_format.to_json()}
        if meta is not None:
            (tmp / "chatsmith.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if out_dir.exists():
            for entry in out_dir.iterdir():
                if not (tmp / entry.name).exists():
                    shutil.move(str(entry), tmp / entry.name)
    return out_dir


def merged(model):
    """The trained model as a plain transformers model (a LoRA adapter merged into its weights)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def make_scheduler(optimizer, config, total_steps: int):
    """The LR schedule of a `TrainCommon` config over `total_steps` optimizer steps."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[config.lr_scheduler], optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=total_steps)


def write_safetensors(state: dict, path: Path) -> None:
    """Whole tensors to one safetensors file, atomically (fresh contiguous CPU copies: safetensors
    refuses tensors that share storage, as tied embeddings do; every key is kept, so a strict
    `load_state_dict` accepts the file)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------ resume


class ResumeState:
    """`resume/` of one stage: save and load everything an interrupted loop needs to continue exactly.

    `model` is the prepared (accelerate-wrapped) model, `optimizer` the prepared optimizer and
    `scheduler` a plain torch scheduler; `counters` is the loop's own JSON state (step, data position,
    controllers). Every rank calls `save` and `load` (collectives under DeepSpeed)."""

    def __init__(self, accelerator, resume_dir: str | os.PathLike):
        from stages.distributed import uses_deepspeed

        self.accelerator = accelerator
        self.dir = Path(resume_dir)
        self.backend = "deepspeed" if uses_deepspeed(accelerator) else "torch"

    def find(self) -> Path | None:
        """The resume state, if any (a kill mid-swap leaves `resume.old`): a directory with anything in it, so that one
        an older chatsmith (or anything else) wrote is refused by `load` rather than silently restarted over."""
        for candidate in (self.dir, self.dir.with_name(self.dir.name + ".old")):
            if candidate.is_dir() and any(candidate.iterdir()):
                return candidate
        return None

    def save(self, *, model, optimizer, scheduler, counters: dict, keep: tuple[str, ...] = ()) -> None:
        import torch

        accelerator = self.accelerator
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if self.backend == "deepspeed":
            accelerator.save_state(str(tmp), safe_serialization=True)  # each rank writes its ZeRO shards
        else:
            weights = accelerator.get_state_dict(model)
            if accelerator.is_main_process:
                write_safetensors(weights, tmp / "model.safetensors")
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
            torch.save({"scheduler": scheduler.state_dict(), "rng": rng}, tmp / "loop.pt")
            for name in keep:
                if (self.dir / name).exists() and not (tmp / name).exists():
                    shutil.copy2(self.dir / name, tmp / name)
            write_json_atomic(tmp / STATE_FILE, {"format": RESUME_FORMAT, "backend": self.backend,
                                                 "world_size": accelerator.num_processes, "counters": counters})
            write_json_atomic(tmp / HASHES_FILE, _hash_tree(tmp))
            _swap_into_place(tmp, self.dir)
        accelerator.wait_for_everyone()
        after_resume_save()

    def load(self, *, model, optimizer, scheduler) -> dict | None:
        """Restore into the given objects and return the counters; None when there is nothing to resume."""
        import torch

        found = self.find()
        if found is None:
            return None
        state = self._checked(found)
        if self.backend == "deepspeed":
            self.accelerator.load_state(str(found))  # DeepSpeed's loader: weights_only=False, hence the hashes
        else:
            try:
                self.accelerator.unwrap_model(model).load_state_dict(read_safetensors(found / "model.safetensors"))
            except RuntimeError as error:
                raise ResumeError(f"{found}: the saved model does not match this one ({str(error).splitlines()[0]}); "
                                  f"delete {self.dir} to restart the stage") from None
            optimizer.load_state_dict(torch.load(found / "optimizer.pt", weights_only=True))
        loop = torch.load(found / "loop.pt", weights_only=True)
        scheduler.load_state_dict(loop["scheduler"])
        torch.set_rng_state(loop["rng"]["torch"])
        if loop["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(loop["rng"]["cuda"])
        return state["counters"]

    def _checked(self, found: Path) -> dict:
        restart = f"delete {self.dir} to restart the stage from its beginning"
        if not (found / STATE_FILE).exists():
            raise ResumeError(f"{found} was written by an older chatsmith (resume format 1); {restart}")
        state = json.loads((found / STATE_FILE).read_text())
        if "format" not in state:
            raise ResumeError(f"{found} was written by an older chatsmith (resume format 1); {restart}")
        if state["format"] != RESUME_FORMAT:
            raise ResumeError(f"{found} has resume format {state.get('format')}, this chatsmith reads {RESUME_FORMAT}; {restart}")
        if state["backend"] != self.backend or state["world_size"] != self.accelerator.num_processes:
            raise ResumeError(f"{found} was saved by {state['world_size']} process(es) with backend {state['backend']}; this run "
                              f"has {self.accelerator.num_processes} with {self.backend}: resume with the same launch "
                              f"settings, or {restart}")
        recorded = json.loads((found / HASHES_FILE).read_text()) if (found / HASHES_FILE).exists() else None
        actual = _hash_tree(found)
        if recorded != actual:
            changed = sorted(k for k in set(actual) | set(recorded or {}) if (recorded or {}).get(k) != actual.get(k))
            raise ResumeError(f"{found}: {', '.join(changed[:3]) or HASHES_FILE} does not match what chatsmith recorded "
                              f"when it saved (changed, or not written by chatsmith); refusing to load it; {restart}")
        return state

    def remove(self) -> None:
        if self.accelerator.is_main_process:
            for path in (self.dir, self.dir.with_name(self.dir.name + ".old")):
                shutil.rmtree(path, ignore_errors=True)
