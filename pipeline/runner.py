"""The runner: chains the stages in order inside one run directory and records the lineage.

    chatsmith run recipes/tiny-cpu.yaml --out runs/demo

For each stage of `pipeline.registry.STAGES` it resolves the inputs, skips the stage when the manifest
says it is done with the same config and the same input hashes, otherwise runs it (a stage cut short
resumes from its `resume/`), evaluates it (the stage's `evaluate` hook: `pipeline.eval.run`), and records
status, inputs with sha256, output, metrics and time in `manifest.json`. Data come from `pipeline.data` and the
run's data source (`pipeline.registry.data_source`: the recipe's files, or the demo world, which also adds its
labelers before the reward stage and its gold judge to the evaluation).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from pipeline.data import config_sha, materialise_data, pretrain_sources, sources_fingerprint
from pipeline.manifest import Manifest
from pipeline.recipe import Recipe, dump_recipe
from pipeline.registry import STAGES, MissingInput, data_source
from stages.checkpoint import sha256_path
from stages.common import write_json_atomic


class StageFailed(RuntimeError):
    def __init__(self, stage: str, error: str, log: str | None = None):
        super().__init__(f"stage {stage} failed: {error}" + (f" (log: {log})" if log else ""))
        self.stage, self.error, self.log = stage, error, log


class Run:
    """A run directory and the recipe that made it."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, say: Callable[[str], None] = print):
        self.recipe = recipe
        self.dir = Path(out_dir)
        self.data_dir = self.dir / "data"
        self.say = say
        self.manifest: Manifest | None = None
        self.launcher: Optional[Callable[[str], dict]] = None
        self.ran: list[str] = []  # stages this invocation ran (not skipped)
        self.pretrain_sources: list | None = None  # resolved once (`pipeline.data.pretrain_sources`)
        self.fingerprinted = False  # DIR/data/pretrain_sources.json written by this invocation
        self.source = data_source(self)

    def stage_dir(self, name: str) -> Path:
        return self.dir / name

    def data_path(self, name: str) -> Path:
        return self.data_dir / name

    # ------------------------------------------------------------------ stages
    def stage_inputs(self, name: str) -> dict[str, Path]:
        """Where a stage reads from: the recipe's explicit paths, else the run's own."""
        try:
            return STAGES[name].inputs(self, getattr(self.recipe.stages, name))
        except MissingInput as error:
            raise StageFailed(name, str(error)) from None

    def lineage(self, inputs: dict[str, Path]) -> dict:
        return {"parents": {k: {"path": str(p), "sha256": sha256_path(p) if p.exists() else None} for k, p in inputs.items()},
                "recipe": self.recipe.name}

    def stage_config_sha(self, name: str, cfg) -> str:
        judged = {}
        if STAGES[name].chat:  # its behaviour evaluation is part of the stage's result
            judged = {"eval": self.recipe.eval.model_dump(mode="json"), **self.source.judged_settings()}
        return config_sha({"stage": cfg.model_dump(mode="json"), **judged})

    def run_stage(self, name: str, *, force: bool = False) -> dict:
        """Run one stage (if not already done with the same config and inputs); return its eval."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.manifest or Manifest(self.dir)
        cfg = getattr(self.recipe.stages, name)
        if cfg is None:
            raise StageFailed(name, f"stages.{name} is null in the recipe")
        self.source.before_stage(name)
        if STAGES[name].prepare:
            STAGES[name].prepare(self)
        inputs = self.stage_inputs(name)
        missing = [f"{k} ({p})" for k, p in inputs.items() if not p.exists()]
        if missing:
            raise StageFailed(name, f"missing inputs: {', '.join(missing)}")
        sha = self.stage_config_sha(name, cfg)
        current, reason = self.manifest.is_current(name, config_sha=sha, inputs={k: str(p) for k, p in inputs.items()})
        if current and not force:
            self.say(f"{name}: done, skipped")
            return self.manifest.entry(name).get("metrics", {})
        out = self.stage_dir(name)
        self.ran.append(name)
        self.say(f"{name}: running ({reason})")
        self.manifest.start(name, config_sha=sha, inputs={k: str(p) for k, p in inputs.items()}, output=str(out), reason=reason)
        started = time.perf_counter()
        try:
            # `launcher` (set by pipeline.launch) runs the stage function as a launched process group.
            metrics = self.launcher(name) if self.launcher else self.train(name, cfg, inputs, out)
            if STAGES[name].evaluate:
                metrics = {**metrics, **STAGES[name].evaluate(self, name, out, inputs)}
        except BaseException as error:  # a crash is recorded (manifest + log), then re-raised as StageFailed
            raise self._failed(name, error) from error
        write_json_atomic(out / "eval.json", metrics)
        self.manifest.finish(name, metrics=metrics, output_sha=self.manifest.sha256(out), seconds=round(time.perf_counter() - started, 1))
        return metrics

    def _failed(self, name: str, error: BaseException) -> BaseException:
        log = self.dir / "logs" / f"{name}.log"
        message = error.error if isinstance(error, StageFailed) else f"{type(error).__name__}: {error}"
        self.manifest.fail(name, error=message, log=str(log))
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:  # appended: a launched stage's output is already there
            handle.write(traceback.format_exc())
        if isinstance(error, Exception) and not isinstance(error, StageFailed):
            return StageFailed(name, message, str(log))
        return error

    def train(self, name: str, cfg, inputs: dict[str, Path], out: Path) -> dict:
        """The stage function itself: what every process of a launched stage runs."""
        return STAGES[name].train(cfg, inputs, out, meta=self.lineage(inputs), run=self)

    # ------------------------------------------------------------------ the whole chain
    def prepare(self, *, only: str | None = None) -> None:
        """Resolved recipe, manifest and data; the tokenizer too unless the one stage to run
        (`only`) starts from existing checkpoints (a standalone SFT, reward or PPO run)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "recipe.yaml").write_text(dump_recipe(self.recipe))
        self.manifest = Manifest(self.dir)
        materialise_data(self)
        if only in (None, "pretrain"):
            self.ensure_tokenizer()

    def ensure_tokenizer(self) -> None:
        from stages import tokenizer as tokenizer_stage
        from stages.data.sources import sample_texts

        out = self.dir / "tokenizer"
        cfg = self.recipe.tokenizer
        sha = config_sha(cfg.model_dump(mode="json"))
        if cfg.train and not pretrain_sources(self):
            raise StageFailed("tokenizer", "tokenizer.train is true but the recipe has no pretraining text "
                                           "(data.pretrain_text); or set tokenizer.train=false and tokenizer.from_checkpoint")
        inputs = {"sources": str(sources_fingerprint(self))} if cfg.train else {"checkpoint": cfg.from_checkpoint}
        current, reason = self.manifest.is_current("tokenizer", config_sha=sha, inputs=inputs)
        if current:
            return
        self.say(f"tokenizer: {'training a byte-level BPE' if cfg.train else 'taken from ' + str(cfg.from_checkpoint)}")
        self.manifest.start("tokenizer", config_sha=sha, inputs=inputs, output=str(out), reason=reason)
        # A sample of the text, streamed (the whole corpus of a real run would not fit in memory).
        documents = sample_texts(pretrain_sources(self), sample_bytes=cfg.train_sample_bytes, seed=self.recipe.seed) if cfg.train else None
        tok = tokenizer_stage.run(cfg, documents=documents, output_dir=out)
        self.manifest.finish("tokenizer", metrics={"vocab_size": len(tok)})

    def run_all(self) -> dict[str, dict]:
        self.prepare()
        return {name: self.run_stage(name) for name in STAGES if getattr(self.recipe.stages, name) is not None}
