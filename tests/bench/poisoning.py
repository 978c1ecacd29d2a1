"""Poisoning, tested (issue 18, Part A item 4): a simulated labeler flips every comparison about a trigger topic on
the demo world; does screening (`data.screen`) flag them, and how much does each build's reward model agree with
gold on the topic?

Three builds of the same tasks (the same prompts, candidates and controls; only who labels what differs): clean
(no poisoner), poisoned (a poisoner takes `SHARE` of the trigger attribute's tasks; nothing excluded) and screened
(the same labels as poisoned, built with `data.screen.exclude_flagged: true`). `REWARD_MODELS` reward models are
trained on each (`stages.rlhf.reward.run`, the same settings and seeds, from the same tiny random-init base: a
tokenizer trained on the world's text and a 2-layer Llama) and scored on the same pairs, each oriented by gold
(chosen = the reply the gold judge scores higher, never a pair gold ties: scores within `TIE_WINDOW`), so their
mean pairwise accuracy on them is the build's accuracy against gold:

- `topic` (asserted on): fresh candidate pairs (written as the demo's imperfect models write candidates) for
  training-phrasing questions about every trigger-topic fact the labeling tasks asked, none of them a pair any
  build trains on (held-out pairs about the topic). 95% CI: bootstrap over facts.
- `held_out_facts` (reported): every candidate pair of the held-out tasks (the build holds comparisons out by
  fact) about the topic. A random-init reward model cannot know a fact it never saw, so there it can only judge
  style (hedging, rudeness, padding, an answer to another question): a smaller, noisier effect, on fewer facts.

A careless labeler (random rankings) is screened in a fourth build. The one-town variant (`--one-town`, on by
default here): the poisoner flips only one town's questions about the attribute (the town whose fact has the most
training tasks); the script prints every labeler's screening figures, whether screening flags the poisoner, and
the reward models' accuracy on fresh pairs about that one fact.

    .venv/bin/python tests/bench/poisoning.py                        # seeds 0 1 2, one-town variant included
    .venv/bin/python tests/bench/poisoning.py --seeds 0 --no-one-town --json out.json
    .venv/bin/python tests/bench/poisoning.py --json tests/bench/poisoning.json --write-readme   # labeling/README.md

`tests/test_poisoning.py` runs `experiment` for one seed and asserts on its figures; `tests/test_readme_figures.py`
checks that labeling/README.md's `poisoning` block is `markdown()` of `tests/bench/poisoning.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

ATTRIBUTE = "river"
SHARE = 0.6
WORLD = [
    "data.world.towns=48", "data.world.pretrain_only_fraction=0.25", "data.world.docs_per_town=4",
    "data.world.general_docs=10", "data.world.sft_per_fact=1", "data.world.candidate_wrong_fact_rate=0",
    "data.world.rlhf_prompts=1600", "data.world.comparison_prompts=1600", "data.label_with_sft_samples=0",
    "data.world.control_rate=0.1", "data.eval_fraction=0.3",
    # the labelers and candidates the experiment was designed with, pinned so that retuning the demo recipe's
    # (recipes/tiny-cpu.yaml) does not move it
    "data.world.labeler_noise=0.12", "data.world.pleasantry_bias=0.15", "data.world.candidate_off_topic_rate=0.15",
]
"""The experiment's demo world: 32 towns, 24 of them asked about (~77 facts asked, ~19 per attribute), 700 tasks
of 4 replies (~3,200 training pairs), controls 10% of the batch, 30% of the facts held out. Fewer candidates with
a wrong fact than the default world (0.1, not 0.25): a model that knows no facts cannot tell those pairs apart."""
REWARD = {"max_steps": 400, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 10, "save_steps": 400,
          "logging_steps": 100, "max_length": 128}
"""The reward stage's settings for the tiny base (~2 epochs of the clean build)."""
REWARD_MODELS = 3
"""Reward models trained per build (other seeds: score-head init and data order), their accuracies averaged. One
model is one draw: on another CPU (AVX2 against the one the first figures came from) seed 0's single model
recovered 79.9% of the drop instead of 86%, so the figure a test asserts on is the mean of three."""
BASE = {"hidden": 32, "layers": 2, "vocab_size": 1024}
RESULTS = Path(__file__).resolve().parent / "poisoning.json"
README = REPO / "labeling" / "README.md"
README_BLOCK = "poisoning"
TASKS_PER_FACT = 8
"""Fresh candidate sets per topic fact for the `topic` pairs (each gives up to 6 pairs)."""
ONE_TOWN_TASKS = 60
"""... and for the one-town trigger's single fact."""


def poisoner(towns: list[str] | None = None) -> str:
    return f"data.world.poisoner={json.dumps({'attribute': ATTRIBUTE, 'share': SHARE, 'towns': towns})}"


def make_labels(root: Path, name: str, seed: int, overrides: list[str]):
    """A demo run directory with its labels made and built (`make_comparisons`, no model: the simulated writers
    write every candidate). Returns the Run."""
    from pipeline.data import materialise_data
    from pipeline.demo.labelers import make_comparisons
    from pipeline.recipe import load_recipe
    from pipeline.runner import Run
    from tiny import DEMO, TINY

    run = Run(load_recipe(DEMO, [*TINY, *WORLD, f"seed={seed}", *overrides]), root / name, say=lambda _: None)
    materialise_data(run)
    make_comparisons(run, run.source.world, sft_dir=None)
    return run


def base_checkpoint(root: Path, world) -> Path:
    """A tiny random-init causal LM with a tokenizer trained on the world's text (documents and SFT conversations)."""
    from tiny_models import build_tiny_model

    from stages.tokenizer import train_tokenizer

    path = root / "base"
    if not (path / "config.json").exists():
        texts = world.pretrain_documents() + [m["content"] for row in world.sft_conversations() for m in row["messages"]]
        tokenizer = train_tokenizer(texts, vocab_size=BASE["vocab_size"])
        build_tiny_model(path, tokenizer, kind="causal", hidden=BASE["hidden"], layers=BASE["layers"])
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _built(run, name: str) -> Path:
    return run.dir / "labels" / "build" / name


def _gold_pairs(world, prompt: list[dict], row: dict, replies: list[str]) -> list[dict]:
    """Every pair of `replies` gold does not tie, chosen = gold's better one, tagged with the fact."""
    from pipeline.demo.world import TIE_WINDOW

    scores = {reply: world.gold.score(row, reply) for reply in replies}
    out = []
    for a, b in itertools.combinations(dict.fromkeys(replies), 2):
        if abs(scores[a] - scores[b]) > TIE_WINDOW:
            better, worse = (a, b) if scores[a] > scores[b] else (b, a)
            out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": better}],
                        "rejected": [{"role": "assistant", "content": worse}], "fact": f"{row['town']}/{row['attribute']}"})
    return out


def held_out_fact_pairs(run, attribute: str) -> list[dict]:
    """Gold-oriented pairs of every candidate pair of the held-out tasks (prompts in the build's comparisons_eval)
    about `attribute`; controls left out."""
    world = run.source.world
    held = {row["prompt"][-1]["content"] for row in _rows(_built(run, "comparisons_eval.jsonl"))}
    pairs = []
    for task in _rows(run.dir / "labels" / "tasks" / "tasks.jsonl"):
        question = task["prompt"][-1]["content"]
        if task.get("gold_ranking") is not None or question not in held:
            continue
        town, asked = world.question_fact(question)
        if asked == attribute:
            pairs += _gold_pairs(world, task["prompt"], {"town": town.name, "attribute": asked},
                                 [c["content"] for c in task["candidates"]])
    return pairs


def trained_facts(run, attribute: str) -> dict[str, int]:
    """{town: training prompts} of the `attribute` facts the build's comparisons_train asks about."""
    world, counts = run.source.world, {}
    for prompt in {row["prompt"][-1]["content"] for row in _rows(_built(run, "comparisons_train.jsonl"))}:
        town, asked = world.question_fact(prompt)
        if asked == attribute:
            counts[town.name] = counts.get(town.name, 0) + 1
    return counts


def fresh_pairs(world, towns: list[str], attribute: str, *, tasks: int, seed: int, trained: set) -> list[dict]:
    """Gold-oriented pairs of fresh candidates, `tasks` candidate sets of 4 per fact (`World.synthetic_candidates`,
    the demo's imperfect models), to training-phrasing questions about each town's `attribute`; a pair in `trained`
    ((question, reply, reply), either order) or already made is left out."""
    from pipeline.demo.world import TRAIN_QUESTIONS

    rng, pairs, seen = random.Random(f"fresh:{seed}"), [], set(trained)
    for town in towns:
        row = {"town": town, "attribute": attribute}
        for _ in range(tasks):
            question = rng.choice(TRAIN_QUESTIONS[attribute]).format(t=town)
            for pair in _gold_pairs(world, [{"role": "user", "content": question}], row, world.synthetic_candidates(rng, row, 4)):
                key = (question, pair["chosen"][0]["content"], pair["rejected"][0]["content"])
                if key not in seen:
                    seen.update({key, (question, key[2], key[1])})
                    pairs.append(pair)
    return pairs


def training_pairs(*runs) -> set:
    """(question, chosen, rejected) of every training pair of the runs' builds."""
    return {(row["prompt"][-1]["content"], row["chosen"][-1]["content"], row["rejected"][-1]["content"])
            for run in runs for row in _rows(_built(run, "comparisons_train.jsonl"))}


def _key(pair: dict) -> str:
    return json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)


def reward_accuracy(base: Path, train: Path, pairs: dict[str, list[dict]], out: Path, *, seed: int) -> dict:
    """Trains `REWARD_MODELS` reward models on `train` (seeds `reward_seeds(seed)`: the score head's init and the
    data order differ; the held-out data: every set of `pairs`) and returns, per set, their mean accuracy against
    gold {"accuracy", "ci95", "pairs", "facts"}: each pair counts as the share of the models that order it as gold
    does (CI: bootstrap over facts; over pairs for one fact)."""
    from pipeline.eval.stats import mean_ci
    from stages.config import RewardStageConfig
    from stages.rlhf import reward

    set_of = {_key(p): (name, p["fact"]) for name, rows in pairs.items() for p in rows}
    held = out.parent / f"{out.name}-pairs.jsonl"
    held.write_text("".join(json.dumps(p) + "\n" for rows in pairs.values() for p in rows))
    models = []
    for model_seed in reward_seeds(seed):
        model_dir = out / f"seed-{model_seed}"
        if not (model_dir / "eval_pairs.jsonl").exists():
            reward.run(RewardStageConfig(**REWARD, seed=model_seed), init_from=base, train_data=train,
                       output_dir=model_dir, eval_data=held)
        models.append(_rows(model_dir / "eval_pairs.jsonl"))  # the pairs within max_length, in the file's order
    scored: dict[str, list[tuple[float, str]]] = {name: [] for name in pairs}
    for rows in zip(*models, strict=True):  # one held-out pair as every model scored it
        assert len({_key(p) for p in rows}) == 1, "the reward models scored different pairs"
        name, fact = set_of[_key(rows[0])]
        scored[name].append((sum(p["chosen_score"] > p["rejected_score"] for p in rows) / len(rows), fact))
    figures = {}
    for name, rows in scored.items():
        facts = [fact for _, fact in rows]
        mean, low, high = mean_ci([w for w, _ in rows], clusters=facts if len(set(facts)) > 1 else None, seed=seed)
        figures[name] = {"accuracy": round(mean, 4), "ci95": [round(low, 4), round(high, 4)], "pairs": len(rows),
                         "facts": len(set(facts))}
    return figures


def reward_seeds(seed: int) -> list[int]:
    """The seeds of a build's `REWARD_MODELS` reward models in the experiment of `seed` (the first is `seed`)."""
    return [seed + 1000 * k for k in range(REWARD_MODELS)]


def roles(run) -> dict[str, list[str]]:
    """{role: labeler ids} of the run's simulated labelers (what the export does not say)."""
    from pipeline.demo.labelers import demo_labelers

    out: dict[str, list[str]] = {}
    for labeler in demo_labelers(run.source.world):
        out.setdefault(labeler["role"], []).append(labeler["id"])
    return out


def screening_of(run) -> dict:
    """The build's screening ({"flagged": {id: reasons}, "labelers": {id: figures}}), the roles, what the build
    excluded and kept, and how often its training pairs about the trigger attribute agree with gold
    (`gold_agreement`: pairs gold does not tie)."""
    from pipeline.demo.labelers import gold_agreement

    figures = json.loads(_built(run, "screening.json").read_text())
    built = json.loads(_built(run, "build.json").read_text())
    world = run.source.world
    topic = [row for row in _rows(_built(run, "comparisons_train.jsonl"))
             if world.question_fact(row["prompt"][-1]["content"])[1] == ATTRIBUTE]
    return {"dir": str(run.dir), "flagged": figures["flagged"], "labelers": figures["labelers"], "roles": roles(run),
            "excluded": built["excluded"]["records"], "train_pairs": built["comparisons_train"],
            "label_gold_agreement_topic": round(gold_agreement(world, topic)["agreement"], 4)}


def experiment(root: Path, seed: int = 0, *, one_town: bool = False) -> dict:
    """The builds of one seed, their screening, and their reward models' accuracy against gold on the trigger topic
    (and with `one_town`, the one-town variant). Returns the figures `summary_lines` prints."""
    import torch

    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # the figures depend on the thread count (summation order): one thread, wherever it runs
    try:
        return _experiment(Path(root), seed, one_town=one_town, started=started)
    finally:
        torch.set_num_threads(threads)


def _experiment(root: Path, seed: int, *, one_town: bool, started: float) -> dict:
    runs = {"clean": make_labels(root, "clean", seed, []),
            "poisoned": make_labels(root, "poisoned", seed, [poisoner()]),
            "screened": make_labels(root, "screened", seed, [poisoner(), "data.screen.exclude_flagged=true"])}
    careless = make_labels(root, "careless", seed, ["data.world.careless=1"])
    world, clean = runs["clean"].source.world, runs["clean"]
    topic = trained_facts(clean, ATTRIBUTE)
    pairs = {"topic": fresh_pairs(world, sorted(topic), ATTRIBUTE, tasks=TASKS_PER_FACT, seed=seed,
                                  trained=training_pairs(*runs.values())),
             "held_out_facts": held_out_fact_pairs(clean, ATTRIBUTE)}
    town = max(sorted(topic), key=topic.get)  # the one-town trigger: the fact with the most training tasks
    if one_town:
        runs["one_town"] = make_labels(root, "one-town", seed, [poisoner([town])])
        runs["one_town_screened"] = make_labels(root, "one-town-screened", seed,
                                                [poisoner([town]), "data.screen.exclude_flagged=true"])
        pairs["one_town"] = fresh_pairs(world, [town], ATTRIBUTE, tasks=ONE_TOWN_TASKS, seed=seed,
                                        trained=training_pairs(*runs.values()))
    _check_held_out(world, runs, pairs["held_out_facts"])
    base = base_checkpoint(root, world)
    figures: dict = {"seed": seed, "attribute": ATTRIBUTE, "share": SHARE, "world": WORLD, "reward": REWARD,
                     "reward_seeds": reward_seeds(seed),
                     "base": BASE, "one_town_name": town if one_town else None}
    for name, run in runs.items():
        figures[name] = {**screening_of(run), **reward_accuracy(base, _built(run, "comparisons_train.jsonl"), pairs,
                                                                 root / f"reward-{name}", seed=seed)}
    figures["careless"] = screening_of(careless)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _check_held_out(world, runs: dict, held_out: list[dict]) -> None:
    """The held-out facts' pairs are about facts no build trains on (the split does not depend on the labels)."""
    facts = {p["fact"] for p in held_out}
    for name, run in runs.items():
        for row in _rows(_built(run, "comparisons_train.jsonl")):
            town, attribute = world.question_fact(row["prompt"][-1]["content"])
            if f"{town.name}/{attribute}" in facts:
                raise AssertionError(f"{name}: the held-out fact {town.name}/{attribute} has training comparisons")


def recovered(figures: dict, pairs: str = "topic") -> tuple[float, float]:
    """(the drop from clean to poisoned, the share of it screening recovers) on a set of pairs."""
    clean, poisoned, screened = (figures[name][pairs]["accuracy"] for name in ("clean", "poisoned", "screened"))
    drop = clean - poisoned
    return drop, (screened - poisoned) / drop if drop > 0 else float("nan")


def _labeler_line(who: str, f: dict, role: str) -> str:
    c, p = f["controls"], f["peer_agreement"]
    ci = lambda v: f"[{v[0]:.2f}, {v[1]:.2f}]" if v else ""
    return (f"    {who:<11} {role:<9} controls {c['passed']}/{c['n']} = {c['accuracy'] if c['accuracy'] is not None else '-'} "
            f"{ci(c['ci95'])}  peer agreement {p['agreement'] if p['agreement'] is not None else '-'} {ci(p['ci95'])} "
            f"on {p['tasks']} shared tasks  {','.join(f['flags']) or '-'}")


def _screening_lines(figures: dict) -> list[str]:
    role_of = {who: role for role, ids in figures["roles"].items() for who in ids}
    return [_labeler_line(who, f, role_of.get(who, "")) for who, f in figures["labelers"].items()]


def summary_lines(r: dict) -> list[str]:
    fmt = lambda f: f"{f['accuracy']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
    lines = [f"seed {r['seed']}: trigger `{r['attribute']}`, the poisoner takes {r['share']:.0%} of its tasks"]
    for pairs in ("topic", "held_out_facts"):
        drop, share = recovered(r, pairs)
        lines.append(f"  accuracy against gold, {pairs} ({r['clean'][pairs]['pairs']} pairs, {r['clean'][pairs]['facts']} facts): "
                     + ", ".join(f"{name} {fmt(r[name][pairs])}" for name in ("clean", "poisoned", "screened"))
                     + f"; drop {drop:.3f}, screening recovers {share:.0%} of it")
    lines.append("  training labels about the topic that agree with gold: "
                 + ", ".join(f"{name} {r[name]['label_gold_agreement_topic']:.3f}" for name in ("clean", "poisoned", "screened")))
    for name in ("poisoned", "careless"):
        f = r[name]
        lines.append(f"  {name} build: flagged {f['flagged'] or 'nobody'}; excluded with exclude_flagged: "
                     f"{r['screened']['excluded'] if name == 'poisoned' else '-'} judgments")
        lines += _screening_lines(f)
    if r.get("one_town_name"):
        o, name = r["one_town"], r["one_town_name"]
        lines.append(f"  one-town trigger {name}/{r['attribute']}: flagged {o['flagged'] or 'nobody'}; accuracy against gold on "
                     f"{o['one_town']['pairs']} fresh pairs about it: clean {fmt(r['clean']['one_town'])}, poisoned "
                     f"{fmt(o['one_town'])}, screened {fmt(r['one_town_screened']['one_town'])}")
        lines += _screening_lines(o)
    lines.append(f"  ({r['seconds']:.0f} s)")
    return lines


def _flagged(figures: dict) -> str:
    """Who screening flagged in a build, by role: "the poisoner only (control accuracy)", "nobody", ..."""
    role_of = {who: role for role, ids in figures["roles"].items() for who in ids}
    if not figures["flagged"]:
        return "nobody"
    names = {"poisoner": "the poisoner", "careless": "the careless labeler", "honest": "honest labelers"}
    roles = sorted({role_of.get(who, who) for who in figures["flagged"]})
    reasons = sorted({reason.replace("_", " ") for why in figures["flagged"].values() for reason in why})
    return f"{' and '.join(names.get(r, r) for r in roles)}{' only' if 'honest' not in roles else ''} ({', '.join(reasons)})"


def markdown(results: list[dict]) -> str:
    """The figures of `results` (one entry per seed) as labeling/README.md's `poisoning` block."""
    fmt = lambda f: f"{f['accuracy']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
    lines = [f"Printed by `.venv/bin/python tests/bench/poisoning.py --seeds {' '.join(str(r['seed']) for r in results)}` "
             f"(trigger: questions about a town's **{results[0]['attribute']}**; the poisoner takes "
             f"{results[0]['share']:.0%} of those tasks). Accuracy against gold on fresh pairs about the trigger topic, "
             f"the mean of {len(results[0]['reward_seeds'])} reward models per build (seeds "
             f"{', '.join(str(s) for s in results[0]['reward_seeds'])} for seed {results[0]['seed']}), "
             "95% CI by bootstrap over facts:", "",
             "| seed | clean | poisoned | poisoned, screened | drop | screening recovers | flagged |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        drop, share = recovered(r)
        lines.append(f"| {r['seed']} | {fmt(r['clean']['topic'])} | {fmt(r['poisoned']['topic'])} | {fmt(r['screened']['topic'])} "
                     f"| {drop:.3f} | {share:.0%} | {_flagged(r['poisoned'])} |")
    lines += ["", "A careless labeler (random rankings), flagged: "
              + "; ".join(f"seed {r['seed']}: {_flagged(r['careless'])}" for r in results) + "."]
    one_town = [r for r in results if r.get("one_town_name")]
    if one_town:
        lines += ["", "A poisoner who flips one town's questions only (the town whose fact has the most training tasks), "
                  "flagged, and accuracy against gold on fresh pairs about that one fact, clean / poisoned: "
                  + "; ".join(f"seed {r['seed']} ({r['one_town_name']}, {r['one_town']['one_town']['pairs']} pairs): "
                              f"{_flagged(r['one_town'])}, {fmt(r['clean']['one_town'])} / {fmt(r['one_town']['one_town'])}"
                              for r in one_town) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    import tempfile

    from real_model import write_readme_block

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-one-town", action="store_true", help="leave out the one-town variant")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--root", type=Path, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"also put the figures' markdown into {README.relative_to(REPO)} (block `{README_BLOCK}`)")
    parser.add_argument("--readme-from-json", type=Path, metavar="JSON",
                        help="measure nothing: put the markdown of this --json file into the README block")
    args = parser.parse_args(argv)
    if args.readme_from_json:
        if not args.readme_from_json.is_file():
            sys.exit(f"poisoning: {args.readme_from_json}: no such figures file (a run with --json writes one)")
        write_readme_block(README_BLOCK, markdown(json.loads(args.readme_from_json.read_text())), README)
        return
    results = []
    for seed in args.seeds:
        root = args.root / f"seed-{seed}" if args.root else Path(tempfile.mkdtemp(prefix=f"poisoning-{seed}-"))
        results.append(experiment(root, seed, one_town=not args.no_one_town))
        print("\n".join(summary_lines(results[-1])), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    block = markdown(results)
    print("\n" + block)
    if args.write_readme:
        write_readme_block(README_BLOCK, block, README)


if __name__ == "__main__":
    main()
