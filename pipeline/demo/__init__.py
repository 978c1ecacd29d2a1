"""The demo world as the runner sees it: a data source (`pipeline.data.FilesSource`'s interface) with its data, its
labelers and its gold judge.

Built only when a recipe says `data.source: demo`, by the registry's hook (`pipeline.registry.data_source`); nothing
else imports this package, except `pipeline.recipe`, which mounts the `data.world` settings (`pipeline.demo.config`).

    Demo(run).write_data()               pretraining text, SFT conversations, prompts, held-out prompts
    Demo(run).before_stage("reward")     comparisons from the SFT checkpoint via simulated labelers
    Demo(run).judges()                   the gold judge (`pipeline.demo.judge`) for the run's evaluation
    Demo(run).monitor_judge(config)      ... for the RL stage's monitor (the demo's own held-out prompts only)
    Demo(run).arena_judge()              ... for the run's arena
    Demo(run).stage_figures(...)         fact accuracy on towns seen in SFT, on pretrain-only towns, on unasked facts
    Demo(run).reward_figures(...)        the reward model and the labels against the gold judge
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.data import DATASETS, cache_root
from pipeline.demo.world import World
from stages.checkpoint import sha256_path
from stages.common import write_json_atomic, write_jsonl


def demo_corpus(run) -> Path:
    """The demo world's documents as a corpus file named by its content, beside the token shards, with a fixed
    modification time: the same world gives the same file (and fingerprint) for every run directory, so its
    shards are reused and a copied or moved run directory still matches its lineage."""
    import os
    import shutil

    from stages.checkpoint import sha256_file

    generated = run.data_path("pretrain.jsonl")
    corpus = cache_root(run).parent / "demo-corpus" / f"{sha256_file(generated)[:32]}.jsonl"
    if not corpus.exists():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        tmp = corpus.with_name(corpus.name + ".tmp")
        shutil.copyfile(generated, tmp)
        os.utime(tmp, (946684800, 946684800))  # 2000-01-01: a content-named file needs no real time
        os.replace(tmp, corpus)
    return corpus


class Demo:
    name = "demo"

    def __init__(self, run):
        self.run = run
        self.world = World.build(run.recipe.data.world)

    def write_data(self) -> None:
        world, paths = self.world, {k: self.run.data_path(f"{k}.jsonl") for k in DATASETS}
        write_jsonl(paths["pretrain"], ({"text": d} for d in world.pretrain_documents()))
        conversations = world.sft_conversations()
        n_eval = max(8, len(conversations) // 20)
        write_jsonl(paths["sft_train"], conversations[n_eval:])
        write_jsonl(paths["sft_eval"], conversations[:n_eval])
        write_jsonl(paths["prompts"], world.rlhf_prompts())
        write_jsonl(paths["eval_prompts"], world.eval_prompts())

    def pretrain_sources(self) -> list:
        """The world's documents, as a corpus file beside the token shards (`demo_corpus`)."""
        from stages.data.sources import Source

        return [Source(paths=[str(demo_corpus(self.run))], name="demo-world")]

    def sft_files(self) -> tuple[list[str], list[str]]:
        """(train, held out): the world's SFT conversations, built together with the recipe's own sources."""
        return [str(self.run.data_path("sft_train.jsonl"))], [str(self.run.data_path("sft_eval.jsonl"))]

    sft_build_name = "sft-build"
    """The world's SFT conversations with the recipe's sources build into DIR/labels/sft-build before SFT;
    DIR/labels/build holds the comparisons made after SFT."""

    def judged_settings(self) -> dict:
        """What the demo's evaluation of a stage depends on besides the stage config (enters its hash)."""
        return {"world": self.run.recipe.data.world.model_dump(mode="json")}

    def before_stage(self, name: str) -> None:
        if name == "reward" and not self.run.recipe.stages.reward.data:
            self.ensure_comparisons()

    def ensure_comparisons(self) -> None:
        """The comparisons, made from the SFT checkpoint once per SFT checkpoint."""
        from pipeline.demo.labelers import make_comparisons

        run = self.run
        sft_dir = Path(run.recipe.stages.reward.init_from or run.stage_dir("sft"))
        stamp = run.dir / "labels" / "made_from.json"
        sft_sha = run.manifest.sha256(sft_dir) if run.manifest else sha256_path(sft_dir)
        data_json = run.data_path("data.json")  # the recipe's own sources join these comparisons
        data_sha = json.loads(data_json.read_text()).get("config_sha256") if data_json.exists() else None
        made = json.loads(stamp.read_text()) if stamp.exists() else {}
        if made.get("sft_sha256") == sft_sha and made.get("data_sha256") == data_sha:
            return
        run.say("labels: sampling candidates from the SFT checkpoint, simulated labelers rank them")
        started = time.perf_counter()
        result = make_comparisons(run, self.world, sft_dir)
        write_json_atomic(stamp, {"sft_sha256": sft_sha, "data_sha256": data_sha, "seconds": round(time.perf_counter() - started, 1),
                                  "ingest": result["ingest"], "build": {k: v for k, v in result["build"].items() if k != "paths"}})

    def split_group(self, question: str) -> str | None:
        """The fact a question asks (`town/attribute`): the demo's comparisons are held out by fact, so the reward
        model's held-out accuracy is on facts no training comparison asks in another phrasing."""
        fact = self.world.question_fact(question)
        return f"{fact[0].name}/{fact[1]}" if fact else None

    def judges(self) -> dict:
        """The judges the demo adds to the run's evaluation: the gold judge."""
        return {"gold": self.world.gold}

    def monitor_judge(self, stage_config):
        """The gold judge for the RL stage's monitor. It knows the demo world's held-out prompts, not a user's own."""
        return self.world.gold if not getattr(stage_config, "eval_prompts", None) else None

    def arena_judge(self):
        return self.world.gold

    def reward_figures(self, pairs: list[dict], chosen: list[float], rejected: list[float], clusters: list) -> dict:
        """The reward model and the labels against the gold judge on the held-out comparisons, on the pairs gold does
        not tie (`labelers.gold_agreement`): how often the labels' chosen reply is gold's better one
        (`label_gold_agreement`, the demo's one label–gold agreement) and how often the reward model scores gold's
        better one higher (`pairwise_accuracy_gold`), with 95% CIs by prompt. The reward model learns the labels,
        so it should sit near or below the labels' agreement with gold."""
        from pipeline.demo.labelers import gold_agreement
        from pipeline.eval.stats import mean_ci

        decided = [gold_agreement(self.world, [pair]) for pair in pairs]
        kept = [(d["decided"][0], c > r, cluster) for d, c, r, cluster in zip(decided, chosen, rejected, clusters) if d["pairs"]]
        if not kept:
            return {}
        labels_agree = [label for label, _, _ in kept]
        model_agrees = [float(higher == bool(label)) for label, higher, _ in kept]
        seed = self.run.recipe.eval.seed
        figures = {"gold_decided_pairs": len(kept)}
        for key, values in (("pairwise_accuracy_gold", model_agrees), ("label_gold_agreement", labels_agree)):
            mean, low, high = mean_ci(values, clusters=[cluster for _, _, cluster in kept], seed=seed)
            figures[key], figures[f"{key}_ci95"] = mean, [low, high]
        return figures

    def stage_figures(self, records: list[dict], rows: list[dict]) -> dict:
        """Fact accuracy of greedy answers (`GoldJudge.correct`), on towns in the SFT data (`seen`), on towns whose
        facts only pretraining saw (`pretrain_only`) and on facts of SFT towns no training data asks
        (`pair_unseen`), with 95% CIs over facts."""
        from pipeline.eval.stats import cluster_of, mean_ci

        correct = self.world.gold.correct
        figures = {}
        groups = {"seen": lambda row: bool(row.get("seen")), "pretrain_only": lambda row: not row.get("seen"),
                  # towns SFT saw, but a fact of theirs no training data asks about
                  "pair_unseen": lambda row: bool(row.get("seen")) and bool(row.get("pair_unseen"))}
        for label, wanted in groups.items():
            chosen = [(float(correct(r["greedy"][0]["verdicts"]["gold"])), cluster_of(row))
                      for r, row in zip(records, rows) if wanted(row)]
            if not chosen:
                continue
            values, clusters = [v for v, _ in chosen], [c for _, c in chosen]
            mean, low, high = mean_ci(values, clusters=clusters, seed=self.run.recipe.eval.seed)
            figures[f"fact_accuracy_{label}"] = mean
            figures[f"fact_accuracy_{label}_ci95"] = [low, high]
            figures[f"eval_prompts_{label}"] = len(values)
        return figures
