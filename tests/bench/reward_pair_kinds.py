"""The reward model's held-out accuracy by kind of pair, on a demo run: each held-out comparison's chosen and rejected
replies classed by the gold judge (correct plain or hedged, off topic, abstention, confident wrong, hedged wrong,
other), and the share of each class pair the reward model orders as the labels do.

    .venv/bin/python tests/bench/reward_pair_kinds.py runs/seeds/seed-0

Reads RUN/reward/eval_pairs.jsonl (the reward stage's scored held-out pairs) and the run's world; no model is loaded.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.demo.judge import BASE  # noqa: E402
from pipeline.demo.world import World  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402


def kind(world, row: dict, text: str) -> str:
    verdict = world.gold.verdict(row, text)
    flags = verdict["flags"]
    if flags["off_topic"]:
        return "off_topic"
    if flags["correct"]:
        return "correct_hedged" if flags["hedged"] else "correct_plain"
    if flags["abstained"]:
        return "abstained"
    if flags["confident_wrong"]:
        return "confident_wrong"
    return "wrong_hedged" if verdict["criteria"]["base"] == BASE["wrong_hedged"] else "other"


def accuracy_by_kind(run: Path, eval_pairs: Path) -> list[str]:
    """The scored held-out pairs in `eval_pairs` (the reward stage's eval_pairs.jsonl) of the demo run `run`, by kind
    of chosen and rejected reply, with the share the reward model orders as the labels do: markdown table lines,
    most frequent kinds first."""
    world = World.build(load_recipe(run / "recipe.yaml").data.world)
    hits = defaultdict(list)
    for pair in map(json.loads, eval_pairs.read_text().splitlines()):
        town, attribute = world.question_fact(pair["prompt"][-1]["content"])
        row = {"town": town.name, "attribute": attribute}
        key = (kind(world, row, pair["chosen"][-1]["content"]), kind(world, row, pair["rejected"][-1]["content"]))
        hits[key].append(pair["chosen_score"] > pair["rejected_score"])
    lines = ["| chosen | rejected | pairs | accuracy |", "|---|---|---|---|"]
    for (chosen, rejected), wins in sorted(hits.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {chosen} | {rejected} | {len(wins)} | {sum(wins) / len(wins):.2f} |")
    return lines


def main() -> None:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "reward" / "eval_pairs.jsonl").exists():
        raise SystemExit("usage: reward_pair_kinds.py RUN (a demo run directory with reward/eval_pairs.jsonl)")
    run = Path(sys.argv[1])
    print(f"{run}: held-out pairs by kind (labels' chosen > rejected), the reward model's accuracy")
    print("\n".join(accuracy_by_kind(run, run / "reward" / "eval_pairs.jsonl")))


if __name__ == "__main__":
    main()
