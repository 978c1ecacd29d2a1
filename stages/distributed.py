"""Distributed helpers of the stages' own loops (pretrain, PPO): the one place that knows about
process groups and DeepSpeed. Stage code calls these and `accelerator.prepare/backward`, nothing else.

- `make_accelerator`: an `Accelerator` that sees every process on GPU-less machines too, with the stage's
  experiment trackers started (`report_to`; `tracker_kwargs`, `tracking_environment`).
- `set_deepspeed_micro_batch`: what DeepSpeed cannot infer without a prepared DataLoader.
- `gathered(accelerator, module)`: a module whole (ZeRO-3 gathers its parameters) for `generate`.
- `full_state_dict(accelerator, model, prefix=...)`: the whole weights on the main process (a
  collective under ZeRO-3: every rank calls it).
- `report_rank_data`: diagnostics for the distributed tests, off unless `CHATSMITH_RANK_REPORT` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

RANK_REPORT_ENV = "CHATSMITH_RANK_REPORT"


def make_accelerator(*, report_to: Sequence[str] = (), output_dir: str | os.PathLike | None = None, **kwargs):
    """The `Accelerator` of chatsmith's own training loops.

    Without a GPU, a bare `Accelerator()` in a launched process group believes it is alone (world
    size 1, unsharded data), and `Accelerator(cpu=True)` ignores DeepSpeed. So, as
    `transformers.Trainer` does with `use_cpu=True`: set up the process state for CPU first, then
    the Accelerator, which picks up DeepSpeed when the launcher asked for it.
    Under ZeRO-3 the models are built whole and `accelerator.prepare` shards the trained one: no
    `zero.Init` at load time, so frozen copies (PPO's reference) and seeded inits stay whole and equal.
    With `report_to` (the stage config's), the trackers are started for the stage `output_dir` names; a
    `MetricsLog` given this accelerator sends them its rows."""
    import torch
    from accelerate import Accelerator, PartialState

    if not torch.cuda.is_available():
        PartialState(cpu=True)
    accelerator_kwargs, start_kwargs = tracker_kwargs(report_to, output_dir=output_dir)
    accelerator = Accelerator(**kwargs, **accelerator_kwargs)
    if uses_deepspeed(accelerator):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # accelerate set it; it would make from_pretrained/from_config use zero.Init
    if start_kwargs:
        accelerator.init_trackers(**start_kwargs)
    return accelerator


def tracker_kwargs(report_to: Sequence[str], *, output_dir: str | os.PathLike | None) -> tuple[dict, dict]:
    """The `Accelerator` keyword arguments and the `init_trackers` ones for the stage's `report_to` trackers
    (both empty without trackers): the run is named after the stage (`output_dir`'s name), see `tracking_environment`."""
    if not report_to:
        return {}, {}
    if output_dir is None:
        raise ValueError("report_to needs the stage's output_dir (its trackers write under output_dir/tracking)")
    stage, project = Path(output_dir).name, tracking_environment(output_dir)
    return ({"log_with": list(report_to), "project_dir": str(Path(output_dir) / "tracking")},
            {"project_name": project, "init_kwargs": {"wandb": {"name": stage}, "mlflow": {"run_name": stage}}})


_TRACKING_ENV: dict[str, str] = {}
"""The tracker variables chatsmith set, by name: refreshed for each stage, where the user set none."""


def tracking_environment(output_dir: str | os.PathLike) -> str:
    """Point the trackers at the stage `output_dir` names (its name is the stage's): the W&B project and MLflow
    experiment are the stage's unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise, W&B files go under
    `output_dir/tracking/` unless WANDB_DIR says otherwise, TensorBoard events always under
    `output_dir/tracking/<project>/` (accelerate's `project_dir/project_name`). transformers 5's tracker callbacks
    (the TRL stages') take these only from the environment; set for each stage, the stages of one process agree.
    Returns the project name."""
    stage, tracking = Path(output_dir).name, Path(output_dir) / "tracking"
    tracking.mkdir(parents=True, exist_ok=True)  # W&B wants its dir to exist
    for name, value in {"WANDB_DIR": str(tracking), "WANDB_PROJECT": stage, "MLFLOW_EXPERIMENT_NAME": stage}.items():
        if os.environ.get(name) in (None, _TRACKING_ENV.get(name)):
            os.environ[name] = _TRACKING_ENV[name] = value
    project = os.environ["WANDB_PROJECT"]
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tracking / project)
    return project


def uses_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def zero_stage(accelerator) -> int | None:
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else None


def set_deepspeed_micro_batch(accelerator, *, micro_batch_size: int, max_grad_norm: float) -> None:
    """A custom loop prepares no DataLoader, so DeepSpeed cannot infer its micro-batch size (and
    `prepare` refuses "auto"); gradient clipping is DeepSpeed's own under ZeRO. Call before `prepare`."""
    if uses_deepspeed(accelerator):
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro_batch_size, gradient_clipping=max_grad_norm)


@contextlib.contextmanager
def gathered(accelerator, module):
    """`module` with whole parameters: under ZeRO-3 they are sharded, and `generate` needs them gathered."""
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield module
    else:
        yield module


def full_state_dict(accelerator, model, *, prefix: str | None = None) -> dict | None:
    """The whole weights of a prepared model on the main process (None elsewhere under ZeRO-3).
    With `prefix`, only the keys under it, with the prefix removed (one part of a wrapper module)."""
    state = accelerator.get_state_dict(model)
    if state is None or prefix is None:
        return state
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def report_rank_data(stage: str, accelerator, batch, *, rows=None) -> None:
    """With CHATSMITH_RANK_REPORT naming a directory, each process writes once what world it believes
    it is in and a fingerprint of its first batch (the distributed tests compare them); `rows`, when
    given (a value, or a function computed only when reporting), is written too (pretrain: every sequence of the rank's first step, to check the ranks' slices
    are disjoint and make up the global batch)."""
    report_dir = os.environ.get(RANK_REPORT_ENV)
    if not report_dir:
        return
    path = Path(report_dir) / f"{stage}.data.rank{accelerator.process_index}.json"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"num_processes": accelerator.num_processes, "process_index": accelerator.process_index,
                                "launcher_world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                "batch_sha256": hashlib.sha256(batch.cpu().numpy().tobytes()).hexdigest(),
                                **({"rows": rows() if callable(rows) else rows} if rows is not None else {})}))


def report_trainer_rank_data(trainer, stage: str) -> None:
    """`report_rank_data` for a TRL/HF Trainer: wraps its collator once, only while diagnostics are on."""
    if not os.environ.get(RANK_REPORT_ENV):
        return
    collate = trainer.data_collator

    def collate_and_report(features):
        batch = collate(features)
        report_rank_data(stage, trainer.accelerator, next(v for v in batch.values() if hasattr(v, "numpy")))
        return batch

    trainer.data_collator = collate_and_report
