"""The run's datasets under `DIR/data`: the demo world's, or the recipe's files; labeler exports
ingested and built under `DIR/labels`.

    materialise_data(run)           DIR/data/{pretrain,sft_train,sft_eval,prompts,eval_prompts}.jsonl
    ingest_labels(run, fmt, export) DIR/labels/ingest (accepted/rejected/summary) -> DIR/labels/build
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stages.common import read_jsonl, write_json_atomic, write_jsonl

DATASETS = ("pretrain", "sft_train", "sft_eval", "prompts", "eval_prompts")


def config_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def materialise_data(run) -> dict[str, Path]:
    """Write the run's datasets (skipped when already written for the same data config)."""
    data = run.recipe.data
    stamp = run.data_path("data.json")
    sha = config_sha(data.model_dump(mode="json"))
    paths = {k: run.data_path(f"{k}.jsonl") for k in DATASETS}
    if stamp.exists() and json.loads(stamp.read_text()).get("config_sha256") == sha:
        return {k: p for k, p in paths.items() if p.exists()}
    run.data_dir.mkdir(parents=True, exist_ok=True)
    if run.demo is not None:
        run.demo.write_data(paths)
    else:
        copies = {"pretrain": data.pretrain_text, "sft_train": data.sft, "sft_eval": data.sft_eval,
                  "prompts": data.prompts, "eval_prompts": data.eval_prompts}
        for key, source in copies.items():
            if source:
                write_jsonl(paths[key], read_jsonl(source))
        if data.labels:
            ingest_labels(run, data.labels.format, Path(data.labels.path), eval_fraction=data.labels.eval_fraction)
    write_json_atomic(stamp, {"config_sha256": sha, "source": data.source})
    return {k: p for k, p in paths.items() if p.exists()}


def ingest_labels(run, fmt: str, export: Path, *, eval_fraction: float, tasks: Path | None = None) -> dict:
    """Labeler export -> DIR/labels/ingest (accepted/rejected/summary) -> DIR/labels/build."""
    from labeling.build import build
    from labeling.ingest import ingest

    labels = run.dir / "labels"
    summary = ingest(fmt, export, labels / "ingest", tasks_path=tasks)
    run.say(f"labels: read {summary['read']}, accepted {summary['accepted']}, rejected {summary['rejected']} "
            f"{summary.get('reasons') or ''}")
    built = build(labels / "ingest", labels / "build", eval_fraction=eval_fraction, seed=run.recipe.seed)
    return {"ingest": summary, "build": built}
