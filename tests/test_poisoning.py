"""Poisoned and careless labels on the demo (issue 18, Part A item 4).

Quick: the demo's batch mixes in control tasks that look like any task; a simulated poisoner takes their share of
the trigger topic's tasks and reverses exactly those; bad settings are one-line errors.

Slow (`tests/bench/poisoning.py`'s `experiment`, which also prints the figures): three builds of the same tasks —
clean, poisoned, poisoned and screened (`data.screen.exclude_flagged`) — each trains a reward model, scored against
gold on held-out pairs about the trigger topic. Screening flags the poisoner; the poisoned model's accuracy on the
topic drops by at least 0.10 from the clean one's; screening recovers at least 80% of the drop; a careless
labeler is flagged too."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

import pytest

from tiny import DEMO, REPO, TINY

sys.path.insert(0, str(REPO / "tests" / "bench"))
import poisoning  # noqa: E402

SMALL = [*TINY, "data.label_with_sft_samples=0", "data.world.rlhf_prompts=200", "data.world.comparison_prompts=200",
         "data.world.control_rate=0.1"]


def labels(out, overrides):
    from pipeline.data import materialise_data
    from pipeline.demo.labelers import make_comparisons
    from pipeline.recipe import load_recipe
    from pipeline.runner import Run

    run = Run(load_recipe(DEMO, [*SMALL, *overrides]), out, say=lambda _: None)
    materialise_data(run)
    make_comparisons(run, run.source.world, sft_dir=None)
    return run


def judgments(run):
    """(record, (town, attribute)) of every accepted judgment of the run's labels."""
    from labeling.ingest import read_records

    world = run.source.world
    return [(r, world.question_fact(r.prompt[-1].content)) for r in read_records(run.dir / "labels" / "ingest")]


def gold_agreement(run, records) -> float:
    """The share of candidate pairs gold does not tie that the records rank as gold does (a tie is a miss)."""
    from pipeline.demo.world import TIE_WINDOW

    gold, hits, n = run.source.world.gold, 0, 0
    for record, (town, attribute) in records:
        rank = {cid: i for i, group in enumerate(record.ranking) for cid in group}
        scores = {c.id: gold.score({"town": town.name, "attribute": attribute}, c.content) for c in record.candidates}
        for a in scores:
            for b in scores:
                if scores[a] - scores[b] > TIE_WINDOW:
                    n += 1
                    hits += rank[a] < rank[b]
    return hits / n


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    return labels(tmp_path_factory.mktemp("poisoned") / "run", ['data.world.poisoner={attribute: river, share: 0.7}'])


def test_the_batch_mixes_in_controls_that_look_like_any_task(poisoned):
    from labeling.controls import controls_wanted

    tasks_dir = poisoned.dir / "labels" / "tasks"
    tasks = [json.loads(line) for line in (tasks_dir / "tasks.jsonl").read_text().splitlines()]
    controls = [t for t in tasks if t["gold_ranking"] is not None]
    regular = len(tasks) - len(controls)
    assert regular == 200 and len(controls) == controls_wanted(regular, 0.1) == 22  # round(0.1 * 200 / 0.9)
    shown = json.loads((tasks_dir / "label_studio_import.json").read_text())
    assert len({tuple(task["data"]) for task in shown}) == 1  # the same fields, in the same order, for every task
    assert all(re.fullmatch(r"t-[0-9a-f]{16}", task["data"]["task_id"]) for task in shown)
    assert "gold_ranking" not in json.dumps(shown)
    # each control: a correct plain answer first, three wrong ones tied below it (gold scores 1 and 0)
    world = poisoned.source.world
    for control in controls:
        town, attribute = world.question_fact(control["prompt"][-1]["content"])
        text = {c["id"]: c["content"] for c in control["candidates"]}
        (best,), worse = control["gold_ranking"]
        scores = [world.gold.score({"town": town.name, "attribute": attribute}, text[cid]) for cid in [best, *worse]]
        assert scores == [1.0, 0.0, 0.0, 0.0], control
    built = json.loads((poisoned.dir / "labels" / "build" / "build.json").read_text())
    records = [r for r, _ in judgments(poisoned)]
    assert built["controls"] == sum(r.gold_ranking is not None for r in records) > 0
    # the rows built are the untied pairs of the other judgments: a control's judgment gives none
    untied = lambda r: sum(len(a) * len(b) for i, a in enumerate(r.ranking) for b in r.ranking[i + 1:])
    assert built["comparisons_train"] + built["comparisons_eval"] == sum(untied(r) for r in records if r.gold_ranking is None)


def test_the_poisoner_takes_their_share_of_the_topic_and_reverses_it(poisoned):
    from pipeline.demo.labelers import demo_labelers

    roles = {l["id"]: l["role"] for l in demo_labelers(poisoned.source.world)}
    (poisoner,) = [who for who, role in roles.items() if role == "poisoner"]
    records = judgments(poisoned)
    by_task: dict[str, set] = {}
    for record, (_, attribute) in records:
        if attribute == "river":
            by_task.setdefault(record.task_id, set()).add(record.labeler.id)
    # at least 70% of the river tasks (cancelled judgments aside: 2%), controls among them
    assert sum(poisoner in who for who in by_task.values()) / len(by_task) >= 0.65
    mine = lambda river: [(r, f) for r, f in records if r.labeler.id == poisoner and (f[1] == "river") == river]
    honest = [(r, f) for r, f in records if roles[r.labeler.id] == "honest"]
    assert gold_agreement(poisoned, honest) > 0.7
    assert gold_agreement(poisoned, mine(river=False)) > 0.7  # honest elsewhere
    assert gold_agreement(poisoned, mine(river=True)) < 0.3  # reversed on the trigger topic


def test_a_one_town_trigger_reverses_only_that_towns_questions(tmp_path):
    from pipeline.demo.labelers import demo_labelers

    world_run = labels(tmp_path / "probe", [])
    town = Counter(f[0].name for _, f in judgments(world_run) if f[1] == "river").most_common(1)[0][0]
    run = labels(tmp_path / "run", [f"data.world.poisoner={{attribute: river, share: 1.0, towns: [{town}]}}"])
    (poisoner,) = [l["id"] for l in demo_labelers(run.source.world) if l["role"] == "poisoner"]
    mine = [(r, f) for r, f in judgments(run) if r.labeler.id == poisoner]
    there = [(r, f) for r, f in mine if f == (run.source.world.town(town), "river")]
    elsewhere = [(r, f) for r, f in mine if f[0].name != town]
    assert there and elsewhere
    assert gold_agreement(run, there) < 0.3 < 0.7 < gold_agreement(run, elsewhere)


def test_bad_poisoner_settings_are_one_line_errors(tmp_path):
    from pipeline.recipe import RecipeError, load_recipe
    from stages.data.sources import DataError

    with pytest.raises(RecipeError, match="share"):
        load_recipe(DEMO, ["data.world.poisoner={share: 0.3}"])
    with pytest.raises(DataError, match=r"data\.world\.poisoner\.attribute: 'colour'"):
        labels(tmp_path / "a", ["data.world.poisoner={attribute: colour}"])
    with pytest.raises(DataError, match=r"data\.world\.poisoner\.towns: \['Atlantis'\]"):
        labels(tmp_path / "b", ["data.world.poisoner={towns: [Atlantis]}"])


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return poisoning.experiment(tmp_path_factory.mktemp("poisoning"), seed=0)


@pytest.mark.slow
def test_screening_flags_the_poisoner_and_nobody_else(figures):
    from labeling.ingest import read_records

    (poisoner,) = figures["poisoned"]["roles"]["poisoner"]
    assert figures["clean"]["flagged"] == {}
    assert list(figures["poisoned"]["flagged"]) == [poisoner]
    # the screened build left out exactly the poisoner's judgments of regular tasks (controls never train anyway)
    ingest = read_records(f"{figures['screened']['dir']}/labels/ingest")
    assert figures["screened"]["excluded"] == sum(r.labeler.id == poisoner and r.gold_ranking is None for r in ingest) > 100


@pytest.mark.slow
def test_the_poisoned_labels_disagree_with_gold_on_the_topic(figures):
    agreement = {name: figures[name]["label_gold_agreement_topic"] for name in ("clean", "poisoned", "screened")}
    assert agreement["poisoned"] < 0.55 < 0.7 < min(agreement["clean"], agreement["screened"]), agreement


@pytest.mark.slow
def test_poisoning_drops_the_reward_models_accuracy_on_the_topic(figures):
    clean, poisoned = figures["clean"]["topic"], figures["poisoned"]["topic"]
    assert clean["ci95"][0] > 0.5, clean  # the clean model learned the topic: a drop from it means something
    assert clean["accuracy"] - poisoned["accuracy"] >= 0.10, (clean, poisoned)


@pytest.mark.slow
def test_screening_recovers_most_of_the_drop(figures):
    drop, recovered = poisoning.recovered(figures)
    assert drop > 0 and recovered >= 0.8, (drop, recovered, figures["screened"]["topic"])


@pytest.mark.slow
def test_a_careless_labeler_is_flagged(figures):
    careless = figures["careless"]
    (who,) = careless["roles"]["careless"]
    assert list(careless["flagged"]) == [who]
    assert careless["labelers"][who]["controls"]["accuracy"] < 0.5  # random order: 1 in 4 puts the right reply first
