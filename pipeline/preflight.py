"""Preflight: every problem of a recipe found before any work starts, all listed at once.

    chatsmith check RECIPE [key=value ...]     # also the first thing `chatsmith run` and `chatsmith stage` do

Checks, for the stages that will run: every data path exists and its first records parse in their
format; every labeler export gives records in its declared format (or says which format it looks like);
checkpoints have a config and a tokenizer (a reward model has one output); each stage will have data
(SFT conversations, comparisons, prompts) — a table of what each labeler format can yield; the output
directory is writable and its filesystem has room for the checkpoints (from parameter counts) and the
token shards. Each problem is one line naming the recipe key and the path. Nothing is written.
Warnings (e.g. held-out prompts that also appear in training prompts) do not stop a run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.registry import DATA_SOURCES, STAGES, running

SAMPLE_RECORDS = 20
"""First records of each source read to check it parses."""


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    path: str | None = None

    def line(self) -> str:
        return f"{self.key}: {self.path}: {self.message}" if self.path else f"{self.key}: {self.message}"


def check(recipe, out_dir: str | Path, *, only: str | None = None) -> tuple[list[Problem], list[str]]:
    """(problems, warnings) of running `recipe` into `out_dir` (just stage `only` when given)."""
    stages = running(recipe, only)
    problems: list[Problem] = []
    problems += _sources(recipe, stages)  # on the demo: the sources a recipe adds to the world's data
    problems += _labels(recipe)
    if not DATA_SOURCES[recipe.data.source].gives_stage_data:
        problems += _stage_data(recipe, stages)
    problems += _checkpoints(recipe, stages)
    problems += _output(recipe, Path(out_dir), stages)
    return problems, _warnings(recipe)


# ------------------------------------------------------------------------------------------ sources


def _sources(recipe, stages: list[str]) -> list[Problem]:
    """The files of every `data.*` key a running stage reads (each stage's `data_keys`), and the held-out prompts."""
    data = recipe.data
    keys = dict.fromkeys(key for name in stages for key in STAGES[name].data_keys(getattr(recipe.stages, name)))
    problems = []
    for key in [*keys, "eval_prompts"]:
        for index, source in enumerate(getattr(data, key) or []):
            problems += _source(f"data.{key}" + (f"[{index}]" if len(getattr(data, key)) > 1 else ""), source,
                                data.max_bad_fraction)
    return problems


def _source(key: str, source, max_bad_fraction: float) -> list[Problem]:
    """The source's files exist and its records are usable in its format: every record of SFT conversations,
    comparisons and prompts (a run sets the bad ones aside, and stops past `data.max_bad_fraction`: refused here,
    before any work); the first records of pretraining text (a corpus may be many GB: tokenizing checks the rest)."""
    from stages.data.sources import Bad, DataError, WHOLE_FILES, plan_parts, read_part, source_files

    sample = SAMPLE_RECORDS if source.kind == "text" else None
    try:
        files = source_files(source)
        if not files:
            return [Problem(key, "matches no file", ", ".join(source.paths))]
        bad, good, first_bad = 0, 0, None
        for part in plan_parts(files if sample is None else files[:1], part_bytes=WHOLE_FILES):
            for record in read_part(source, part):
                if isinstance(record, Bad):
                    bad, first_bad = bad + 1, first_bad or record
                else:
                    good += 1
                if sample is not None and good + bad >= sample:
                    break
            if sample is not None:
                break
    except DataError as error:
        return [Problem(key, str(error))]
    reason = f"{first_bad.where}: {first_bad.reason}" if first_bad else "no records"
    if good == 0:
        which = f"the first {bad}" if sample is not None else f"the {bad}"
        return [Problem(key, f"none of {which} records is usable ({reason})", files[0].path)]
    if sample is None and bad > max_bad_fraction * (good + bad):
        return [Problem(key, f"{bad} of {good + bad} records unusable ({bad / (good + bad):.1%} > data.max_bad_fraction "
                             f"{max_bad_fraction:.1%}); first: {reason}", files[0].path)]
    return []


NEEDS = {
    "sft": ("data.sft", "stage sft has no conversations: no data.sft, and the labeler exports ({formats}) give no "
                        "demonstrations (hh-rlhf: set hh_demonstrations: true)"),
    "comparisons": ("data.comparisons", "stage {stage} has no comparisons: no data.comparisons and no labeler export "
                                        "that gives them"),
    "prompts": ("data.prompts", "stage {stage} ({algorithm}) has no prompts: set data.prompts or stages.{stage}.prompts"),
}
"""A kind of rows a stage needs (`Stage.needs`) -> (the recipe key, the message when a files run has none)."""


def _labels(recipe) -> list[Problem]:
    from labeling.ingest import sniff

    problems = []
    for index, export in enumerate(recipe.data.labels):
        message = sniff(export.format, export.path)
        if message:
            problems.append(Problem(f"data.labels[{index}]", message.replace(f"{export.path}: ", "").replace(f"{export.path} ", ""),
                                    export.path))
    return problems


def _stage_data(recipe, stages: list[str]) -> list[Problem]:
    """Each stage that runs will have rows after the build (`Stage.needs`): its own file, the recipe's files, or
    labeler exports whose format yields them (`labeling.readers.READERS`). Comparisons a reward stage of the same
    run reads serve the stages after it too."""
    from labeling.readers import READERS

    data = recipe.data
    yields = {"prompts"} if data.prompts else set()
    yields |= {"sft"} if data.sft else set()
    yields |= {"comparisons"} if data.comparisons else set()
    for export in data.labels:
        yields |= READERS[export.format].yields | ({"sft"} if export.hh_demonstrations else set())
    if recipe.stages.reward and recipe.stages.reward.data:
        yields.add("comparisons")
    problems, seen = [], set()
    for name in stages:
        config = getattr(recipe.stages, name)
        for kind, own in STAGES[name].needs(config):
            if own or kind in yields or kind in seen:
                continue
            seen.add(kind)
            key, message = NEEDS[kind]
            formats = ", ".join(sorted({e.format for e in data.labels})) or "none"
            problems.append(Problem(key, message.format(stage=name, formats=formats, algorithm=getattr(config, "algorithm", ""))))
    return problems


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoints(recipe, stages: list[str]) -> list[Problem]:
    """Every checkpoint path the recipe names for a running stage (`Stage.checkpoints`), and the tokenizer's."""
    wanted = [("tokenizer.from_checkpoint", recipe.tokenizer.from_checkpoint, "causal")] if not recipe.tokenizer.train else []
    for name in stages:
        config = getattr(recipe.stages, name)
        wanted += [(f"stages.{name}.{field}", getattr(config, field), kind) for field, kind in STAGES[name].checkpoints(config)]
    problems = []
    for key, path, kind in wanted:
        if path:
            problems += _checkpoint(key, Path(path), kind)
    return problems


def _checkpoint(key: str, path: Path, kind: str) -> list[Problem]:
    import json

    if not path.is_dir():
        return [Problem(key, "no such checkpoint directory (a local Hugging Face checkpoint; nothing is downloaded)", str(path))]
    missing = [what for what, names in (("config.json", ("config.json",)),
                                        ("tokenizer.json, tokenizer_config.json or tokenizer.model",
                                         ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")))
               if not any((path / name).exists() for name in names)]
    if missing:
        return [Problem(key, f"not a checkpoint: no {' and no '.join(missing)}", str(path))]
    if kind == "reward":
        labels = json.loads((path / "config.json").read_text()).get("num_labels",
                                                                    len(json.loads((path / "config.json").read_text()).get("id2label", {})) or 2)
        if labels != 1:
            return [Problem(key, f"a reward model has one output (num_labels=1), this one has {labels}", str(path))]
    return []


# ------------------------------------------------------------------------------------------ output


def _output(recipe, out_dir: Path, stages: list[str]) -> list[Problem]:
    """Writable, and room for the checkpoints (fp32 weights of every stage, plus resume state) and shards."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        return [Problem("--out", f"not writable (nearest existing directory: {existing})", str(out_dir))]
    needed = _checkpoint_bytes(recipe, stages)
    free = shutil.disk_usage(existing).free
    if needed > free:
        return [Problem("--out", f"needs about {needed / 1e9:.1f} GB for checkpoints and resume state, "
                                 f"{free / 1e9:.1f} GB free", str(out_dir))]
    return []


def _checkpoint_bytes(recipe, stages: list[str]) -> int:
    """fp32 weights per stage that runs, plus Adam state (2 x weights) and a second copy while it saves.
    Parameters from the first checkpoint a stage starts from (`Stage.start`), else the recipe's architecture (no
    transformers import: preflight stays fast)."""
    configs = [getattr(recipe.stages, name) for name in STAGES]
    start = next((getattr(c, STAGES[n].start) for n, c in zip(STAGES, configs) if c is not None and getattr(c, STAGES[n].start)), None)
    if start and Path(start).is_dir():
        weights = sum(f.stat().st_size for f in Path(start).glob("*.safetensors"))
        params = weights // 2 if weights else 0  # assume bf16 on disk: an upper bound for fp32 below
    elif recipe.stages.pretrain and not start:
        arch = recipe.stages.pretrain.model
        kv = (arch.num_key_value_heads or arch.num_attention_heads) / arch.num_attention_heads
        per_layer = arch.hidden_size ** 2 * (2 + 2 * kv) + 3 * arch.hidden_size * arch.intermediate_size
        params = arch.num_hidden_layers * per_layer + recipe.tokenizer.vocab_size * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
    else:
        return 0  # a checkpoint that is not here: its own problem line says so
    return int(params * 4 * (len(stages) + 4))


def _warnings(recipe) -> list[str]:
    """Held-out prompts that also appear among the training prompts."""
    from stages.data.sources import DataError, read_records

    data = recipe.data
    if data.source != "files" or not data.prompts or not data.eval_prompts:
        return []
    try:
        def texts(sources):
            return {str(r.get("prompt") or r.get("messages")) for s in sources for r in read_records(s, max_bad_fraction=1.0)}

        overlap = texts(data.eval_prompts) & texts(data.prompts)
    except DataError:
        return []
    return [f"data.eval_prompts: {len(overlap)} held-out prompts also appear in data.prompts"] if overlap else []
