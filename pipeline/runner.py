"""The runner: chains the stages in order inside one run directory and records the lineage.

    chatsmith run recipes/tiny-cpu.yaml --out runs/demo

For each stage it resolves the inputs (the previous stage's checkpoint, the run's data), skips the
stage when the manifest says it is done with the same config and the same input hashes, otherwise
runs it (a stage cut short resumes from its `resume/`), adds the behaviour evaluation to its
`eval.json`, and records status, inputs with sha256, output and metrics in `manifest.json`.
The demo's comparisons are made the way a team makes them: K replies per prompt (some sampled from
the SFT checkpoint) become Label Studio tasks, simulated labelers rank them, and their export goes
through `labeling` ingest and build like any labeler export.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from pipeline.demo_world import World
from pipeline.manifest import Manifest
from pipeline.recipe import Recipe, dump_recipe
from stages.common import read_jsonl, sha256_path, write_json_atomic, write_jsonl
from stages.config import STAGE_ORDER


class StageFailed(RuntimeError):
    def __init__(self, stage: str, error: str, log: str | None = None):
        super().__init__(f"stage {stage} failed: {error}" + (f" (log: {log})" if log else ""))
        self.stage, self.error, self.log = stage, error, log


def config_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Run:
    """A run directory and the recipe that made it."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, say: Callable[[str], None] = print):
        self.recipe = recipe
        self.dir = Path(out_dir)
        self.data_dir = self.dir / "data"
        self.say = say
        self.world = World.build(recipe.data.world) if recipe.data.source == "demo" else None
        self.manifest: Manifest | None = None
        self.launcher: Optional[Callable[[str], dict]] = None

    # ------------------------------------------------------------------ paths
    def stage_dir(self, name: str) -> Path:
        return self.dir / name

    def data_path(self, name: str) -> Path:
        return self.data_dir / name

    # ------------------------------------------------------------------ data
    def materialise_data(self) -> dict[str, Path]:
        """Write the run's datasets under DIR/data (demo world or copies of the recipe's files).
        Skipped when already written for the same data config."""
        data = self.recipe.data
        stamp = self.data_path("data.json")
        sha = config_sha(data.model_dump(mode="json"))
        paths = {k: self.data_path(f"{k}.jsonl") for k in ("pretrain", "sft_train", "sft_eval", "prompts", "eval_prompts")}
        if stamp.exists() and json.loads(stamp.read_text()).get("config_sha256") == sha:
            return {k: p for k, p in paths.items() if p.exists()}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if data.source == "demo":
            world = self.world
            write_jsonl(paths["pretrain"], ({"text": d} for d in world.pretrain_documents()))
            conversations = world.sft_conversations()
            n_eval = max(8, len(conversations) // 20)
            write_jsonl(paths["sft_train"], conversations[n_eval:])
            write_jsonl(paths["sft_eval"], conversations[:n_eval])
            write_jsonl(paths["prompts"], world.rlhf_prompts())
            write_jsonl(paths["eval_prompts"], world.eval_prompts())
        else:
            copies = {"pretrain": data.pretrain_text, "sft_train": data.sft, "sft_eval": data.sft_eval,
                      "prompts": data.prompts, "eval_prompts": data.eval_prompts}
            for key, source in copies.items():
                if source:
                    write_jsonl(paths[key], read_jsonl(source))
            if data.labels:
                self.ingest_labels(data.labels.format, Path(data.labels.path), eval_fraction=data.labels.eval_fraction)
        write_json_atomic(stamp, {"config_sha256": sha, "source": data.source})
        return {k: p for k, p in paths.items() if p.exists()}

    def ingest_labels(self, fmt: str, export: Path, *, eval_fraction: float, tasks: Path | None = None) -> dict:
        """Labeler export -> DIR/labels/ingest (accepted/rejected/summary) -> DIR/labels/build."""
        from labeling.build import build
        from labeling.ingest import ingest

        labels = self.dir / "labels"
        summary = ingest(fmt, export, labels / "ingest", tasks_path=tasks)
        self.say(f"labels: read {summary['read']}, accepted {summary['accepted']}, rejected {summary['rejected']} "
                 f"{summary.get('reasons') or ''}")
        built = build(labels / "ingest", labels / "build", eval_fraction=eval_fraction, seed=self.recipe.seed)
        return {"ingest": summary, "build": built}

    def demo_comparisons(self, sft_dir: Path | None) -> dict:
        """The loop back to labelers, on the demo world: tasks -> simulated labelers -> Label Studio
        export -> ingest -> build. K candidates per prompt: some sampled from the SFT checkpoint,
        the rest written by simulated imperfect models."""
        from labeling.tasks import label_studio_export, write_tasks

        world, cfg = self.world, self.recipe.data
        rng = random.Random(cfg.world.seed + 11)
        rows = read_jsonl(self.data_path("prompts.jsonl"))[: cfg.world.comparison_prompts]
        k = cfg.world.candidates_per_prompt
        n_sampled = min(cfg.label_with_sft_samples, k) if sft_dir else 0
        sampled: list[list[str]] = [[] for _ in rows]
        if n_sampled:
            from pipeline.evaluate import load_chat_model
            from stages.common import generate_replies, prompt_messages

            model, tokenizer = load_chat_model(sft_dir)
            for j in range(n_sampled):
                replies = generate_replies(model, tokenizer, [prompt_messages(r) for r in rows],
                                           max_new_tokens=self.recipe.eval.max_new_tokens, batch_size=64,
                                           do_sample=True, temperature=1.0, seed=cfg.world.seed + 100 + j)
                for i, reply in enumerate(replies):
                    sampled[i].append(reply["reply"])
        tasks, by_id = [], {}
        for i, row in enumerate(rows):
            candidates, seen_texts = [], set()
            for text in sampled[i]:
                if text and text not in seen_texts:
                    candidates.append({"content": text, "model": "sft"})
                    seen_texts.add(text)
            attempts = 0
            while len(candidates) < k and attempts < 20:
                attempts += 1
                text = world.synthetic_candidates(rng, row, 1)[0]
                if text not in seen_texts:
                    candidates.append({"content": text, "model": "demo-writer"})
                    seen_texts.add(text)
            order = list(range(len(candidates)))
            rng.shuffle(order)  # the display order labelers see
            task = {"task_id": f"demo-{row['id']}", "prompt": [{"role": "user", "content": row["prompt"]}],
                    "candidates": [{"id": "abcdefgh"[n], **candidates[o]} for n, o in enumerate(order)]}
            tasks.append(task)
            by_id[task["task_id"]] = row
        labelers = world.labelers()
        judgments = {}
        for task in tasks:
            row = by_id[task["task_id"]]
            assigned = [rng.choice(labelers)]
            if rng.random() < cfg.world.overlap:
                assigned.append(rng.choice([l for l in labelers if l is not assigned[0]]))
            judgments[task["task_id"]] = [self._simulated_judgment(rng, labeler, row, task) for labeler in assigned]
        labels = self.dir / "labels"
        write_tasks(tasks, labels / "tasks")
        export = label_studio_export(tasks, judgments, labels / "label_studio_export.json")
        return self.ingest_labels("label-studio", export, eval_fraction=0.1, tasks=labels / "tasks" / "tasks.jsonl")

    def _simulated_judgment(self, rng: random.Random, labeler: dict, row: dict, task: dict) -> dict:
        ids = [c["id"] for c in task["candidates"]]
        judged = self.world.rank(rng, labeler, row, [c["content"] for c in task["candidates"]])
        groups: dict[int, list[str]] = {}
        for cid, rank in zip(ids, judged["ranks"]):
            groups.setdefault(rank, []).append(cid)
        flags = {}
        for cid, cand in zip(ids, task["candidates"]):
            verdict = self.world.judge(row, cand["content"])
            marks = [f for f, hit in (("harmful", verdict["harmless"] == 0), ("hallucination", verdict["truthful"] == 0 and verdict["helpful"] == 1)) if hit]
            if marks:
                flags[cid] = marks
        return {
            "annotator": labeler["id"],
            "ranking": [groups[r] for r in sorted(groups)],
            "ratings": {cid: {"overall": rating} for cid, rating in zip(ids, judged["ratings"])},
            "flags": flags,
            "lead_time": round(judged["lead_time"], 1),
            "was_cancelled": rng.random() < 0.02,
        }

    # ------------------------------------------------------------------ stages
    def stage_inputs(self, name: str) -> dict[str, Path]:
        """Where each stage reads from: the recipe's explicit paths, else the run's own."""
        stages = self.recipe.stages
        if name == "pretrain":
            cfg = stages.pretrain
            inputs = {"tokenizer": self.dir / "tokenizer", "documents": self.data_path("pretrain.jsonl")}
            if cfg.init_from:
                inputs["init_from"] = Path(cfg.init_from)
            return inputs
        if name == "sft":
            cfg = stages.sft
            parent = cfg.init_from or (self.stage_dir("pretrain") if stages.pretrain else None)
            if parent is None:
                raise StageFailed("sft", "no pretrain stage in the recipe: set stages.sft.init_from")
            labels_build = self.dir / "labels" / "build"
            default_train = labels_build / "sft_train.jsonl" if self.recipe.data.labels else self.data_path("sft_train.jsonl")
            default_eval = labels_build / "sft_eval.jsonl" if self.recipe.data.labels else self.data_path("sft_eval.jsonl")
            inputs = {"init_from": Path(parent), "train_data": Path(cfg.data or default_train)}
            eval_data = cfg.eval_data or (default_eval if default_eval.exists() else None)
            if eval_data:
                inputs["eval_data"] = Path(eval_data)
            return inputs
        if name == "reward":
            cfg = stages.reward
            parent = cfg.init_from or (self.stage_dir("sft") if stages.sft else None)
            if parent is None:
                raise StageFailed("reward", "no sft stage in the recipe: set stages.reward.init_from")
            build = self.dir / "labels" / "build"
            train = cfg.data or self.recipe.data.comparisons or build / "comparisons_train.jsonl"
            eval_data = cfg.eval_data or self.recipe.data.comparisons_eval or build / "comparisons_eval.jsonl"
            return {"init_from": Path(parent), "train_data": Path(train), "eval_data": Path(eval_data)}
        if name == "ppo":
            cfg = stages.ppo
            policy = cfg.policy or (self.stage_dir("sft") if stages.sft else None)
            reward = cfg.reward_model or (self.stage_dir("reward") if stages.reward else None)
            dpo = cfg.algorithm == "dpo"  # DPO learns straight from the comparisons: no reward model needed
            if policy is None or (reward is None and not dpo):
                raise StageFailed("ppo", "set stages.ppo.policy and stages.ppo.reward_model (no sft/reward stage in the recipe)")
            inputs = {"policy": Path(policy), "prompts": Path(cfg.prompts or self.data_path("prompts.jsonl"))}
            if reward is not None:
                inputs["reward_model"] = Path(reward)
            if dpo:
                comparisons = self.stage_inputs("reward")["train_data"] if stages.reward else self.recipe.data.comparisons
                if comparisons is None:
                    raise StageFailed("ppo", "algorithm dpo needs comparisons: data.comparisons or a reward stage's data")
                inputs["comparisons"] = Path(comparisons)
            eval_prompts = cfg.eval_prompts or self.data_path("eval_prompts.jsonl")
            if Path(eval_prompts).exists():
                inputs["eval_prompts"] = Path(eval_prompts)
            return inputs
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")

    def lineage(self, inputs: dict[str, Path]) -> dict:
        return {"parents": {k: {"path": str(p), "sha256": sha256_path(p) if p.exists() else None} for k, p in inputs.items()},
                "recipe": self.recipe.name}

    def run_stage(self, name: str, *, force: bool = False) -> dict:
        """Run one stage (if not already done with the same config and inputs); return its eval."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.manifest or Manifest(self.dir)
        cfg = getattr(self.recipe.stages, name)
        if cfg is None:
            raise StageFailed(name, f"stages.{name} is null in the recipe")
        if name == "reward" and self.recipe.data.source == "demo" and not self.recipe.stages.reward.data:
            self.ensure_demo_comparisons()
        inputs = self.stage_inputs(name)
        missing = [f"{k} ({p})" for k, p in inputs.items() if not p.exists()]
        if missing:
            raise StageFailed(name, f"missing inputs: {', '.join(missing)}")
        judged = {"eval": self.recipe.eval.model_dump(mode="json"),
                  "world": self.recipe.data.world.model_dump(mode="json") if self.world else None}
        sha = config_sha({"stage": cfg.model_dump(mode="json"), **(judged if name in ("sft", "ppo") else {})})
        current, reason = self.manifest.is_current(name, config_sha=sha, inputs={k: str(p) for k, p in inputs.items()})
        if current and not force:
            self.say(f"{name}: done, skipped")
            return self.manifest.entry(name).get("metrics", {})
        out = self.stage_dir(name)
        self.say(f"{name}: running ({reason})")
        self.manifest.start(name, config_sha=sha, inputs={k: str(p) for k, p in inputs.items()}, output=str(out), reason=reason)
        started = time.perf_counter()
        try:
            metrics = self._execute(name, cfg, inputs, out)
        except BaseException as error:  # a crash is recorded (manifest + log), then re-raised as StageFailed
            log = self.dir / "logs" / f"{name}.log"
            message = error.error if isinstance(error, StageFailed) else f"{type(error).__name__}: {error}"
            self.manifest.fail(name, error=message, log=str(log))
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as handle:  # appended: a launched stage's output is already there
                handle.write(traceback.format_exc())
            if isinstance(error, Exception) and not isinstance(error, StageFailed):
                raise StageFailed(name, message, str(log)) from error
            raise
        metrics["stage_seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(out / "eval.json", metrics)
        self.manifest.finish(name, metrics=metrics, output_sha=sha256_path(out))
        return metrics

    def ensure_demo_comparisons(self) -> None:
        """Demo: make the comparisons from the SFT checkpoint, once per SFT checkpoint."""
        sft_dir = Path(self.recipe.stages.reward.init_from or self.stage_dir("sft"))
        stamp = self.dir / "labels" / "made_from.json"
        sft_sha = sha256_path(sft_dir)
        if stamp.exists() and json.loads(stamp.read_text()).get("sft_sha256") == sft_sha:
            return
        self.say("labels: sampling candidates from the SFT checkpoint, simulated labelers rank them")
        started = time.perf_counter()
        result = self.demo_comparisons(sft_dir)
        write_json_atomic(stamp, {"sft_sha256": sft_sha, "seconds": round(time.perf_counter() - started, 1),
                                  "ingest": result["ingest"], "build": {k: v for k, v in result["build"].items() if k != "paths"}})

    def _execute(self, name: str, cfg, inputs: dict[str, Path], out: Path) -> dict:
        # `launcher` (set by pipeline.launch) runs the stage function as a launched process group.
        metrics = self.launcher(name) if self.launcher else self.train(name, cfg, inputs, out)
        return self.after_training(name, metrics, inputs, out)

    def train(self, name: str, cfg, inputs: dict[str, Path], out: Path) -> dict:
        """The stage function itself: what every process of a launched stage runs."""
        meta = self.lineage(inputs)
        if name == "pretrain":
            from stages import pretrain

            return pretrain.run(cfg, tokenizer_dir=inputs["tokenizer"], documents=inputs["documents"], output_dir=out, meta=meta)
        if name == "sft":
            from stages import sft

            return sft.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"],
                           eval_data=inputs.get("eval_data"), output_dir=out, meta=meta)
        if name == "reward":
            from stages.rlhf import reward

            return reward.run(cfg, init_from=inputs["init_from"], train_data=inputs["train_data"],
                              eval_data=inputs["eval_data"], output_dir=out, meta=meta)
        if name == "ppo":
            from stages.rlhf import ppo

            return ppo.run(cfg, policy=inputs["policy"], reward_model=inputs.get("reward_model"), prompts=inputs["prompts"],
                           eval_prompts=inputs.get("eval_prompts"), output_dir=out, meta=meta,
                           # the judge knows the demo world's held-out prompts, not a user's own
                           gold_scorer=self.world.gold_scorer() if self.world and not cfg.eval_prompts else None,
                           comparisons=inputs.get("comparisons"))
        raise ValueError(name)

    def after_training(self, name: str, metrics: dict, inputs: dict[str, Path], out: Path) -> dict:
        """Main process only: the run-wide behaviour evaluation merged into the stage's metrics."""
        if name == "sft":
            metrics.update(self.behaviour(out, "sft"))
            return metrics
        if name == "ppo":
            # The stage's own held-out figures (greedy, monitor prompts) stay under monitor_*; the
            # run-wide behaviour evaluation (same prompts and seed as SFT's) gives the headline keys.
            behaviour = self.behaviour(out, "ppo")
            renamed = set(behaviour) | {"gold_score_sft", "end_of_turn_rate_sft"}
            metrics = {**{(f"monitor_{k}" if k in renamed else k): v for k, v in metrics.items()}, **behaviour}
            sft_eval = self.stage_dir("sft") / "eval.json"
            if self.world and sft_eval.exists() and Path(inputs["policy"]) == self.stage_dir("sft"):
                sft_metrics = json.loads(sft_eval.read_text())
                metrics["gold_score_sft"] = sft_metrics.get("gold_score")
                metrics["gold_score_greedy_sft"] = sft_metrics.get("gold_score_greedy")
            return metrics
        return metrics

    def behaviour(self, checkpoint: Path, name: str) -> dict:
        """Demo world: the held-out behaviour figures of a chat checkpoint, answers kept for the report."""
        if not self.world or not self.data_path("eval_prompts.jsonl").exists():
            return {}
        from pipeline.evaluate import behaviour

        ev = self.recipe.eval
        rows = read_jsonl(self.data_path("eval_prompts.jsonl"))
        metrics, answers = behaviour(checkpoint, rows, self.world, max_new_tokens=ev.max_new_tokens,
                                     batch_size=ev.batch_size, temperature=ev.temperature, seed=ev.seed)
        write_jsonl(checkpoint / "eval_answers.jsonl", answers)
        return metrics

    # ------------------------------------------------------------------ the whole chain
    def prepare(self, *, only: str | None = None) -> None:
        """Resolved recipe, manifest and data; the tokenizer too unless the one stage to run
        (`only`) starts from existing checkpoints (a standalone SFT, reward or PPO run)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "recipe.yaml").write_text(dump_recipe(self.recipe))
        self.manifest = Manifest(self.dir)
        self.materialise_data()
        if only in (None, "pretrain"):
            self.ensure_tokenizer()

    def ensure_tokenizer(self) -> None:
        from stages import tokenizer as tokenizer_stage

        out = self.dir / "tokenizer"
        cfg = self.recipe.tokenizer
        sha = config_sha(cfg.model_dump(mode="json"))
        inputs = {"documents": str(self.data_path("pretrain.jsonl"))} if cfg.train else {"checkpoint": cfg.from_checkpoint}
        current, reason = self.manifest.is_current("tokenizer", config_sha=sha, inputs=inputs)
        if current:
            return
        self.say(f"tokenizer: {'training a byte-level BPE' if cfg.train else 'taken from ' + str(cfg.from_checkpoint)}")
        self.manifest.start("tokenizer", config_sha=sha, inputs=inputs, output=str(out), reason=reason)
        if cfg.train and not self.data_path("pretrain.jsonl").exists():
            raise StageFailed("tokenizer", "tokenizer.train is true but the recipe has no pretraining text "
                                           "(data.pretrain_text); or set tokenizer.train=false and tokenizer.from_checkpoint")
        documents = (row["text"] for row in read_jsonl(self.data_path("pretrain.jsonl"))) if cfg.train else None
        tok = tokenizer_stage.run(cfg, documents=documents, output_dir=out)
        self.manifest.finish("tokenizer", metrics={"vocab_size": len(tok)})

    def run_all(self, *, only: Optional[list[str]] = None) -> dict[str, dict]:
        self.prepare()
        results = {}
        for name in STAGE_ORDER:
            if getattr(self.recipe.stages, name) is None or (only and name not in only):
                continue
            results[name] = self.run_stage(name)
        return results
