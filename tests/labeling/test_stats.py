"""`labels stats` against simulated labelers whose noise and biases we set.

Each simulated labeler sees K replies with hidden true qualities, perceives quality + Gaussian
noise (sigma), and ranks by what it perceives (ties when perceptions are within `tie_band`).
The figures must move the way the simulation says: more noise -> lower alpha and lower
agreement; a labeler who favours the first-shown reply -> position bias; a labeler who favours
long replies -> length bias; gold accuracy falls with noise."""

from __future__ import annotations

import random

from labeling.cli import main
from labeling.ingest import ingest
from labeling.stats import pair_values, stats
from labeling.tasks import label_studio_export, write_tasks


def _world(n_tasks=60, k=3, seed=0):
    rng = random.Random(seed)
    tasks, truth = [], []
    for i in range(n_tasks):
        quality = [rng.uniform(0, 3) for _ in range(k)]
        # reply length independent of quality, so a length-neutral labeler shows no length bias
        lengths = [rng.randint(5, 60) for _ in range(k)]
        tasks.append({"prompt": [{"role": "user", "content": f"prompt {i}"}],
                      "candidates": [{"content": f"t{i}c{j} " + "x" * lengths[j], "model": "sim"} for j in range(k)],
                      "gold_ranking": None})
        truth.append(quality)
    for i in range(0, n_tasks, 6):  # every sixth task is a gold item
        order = sorted(range(k), key=lambda j: -truth[i][j])
        tasks[i]["gold_ranking"] = [["abc"[j]] for j in order]
    for t in tasks:
        if t["gold_ranking"] is None:
            del t["gold_ranking"]
    return tasks, truth


def _judge(rng, quality, *, sigma, position_pull=0.0, length_pull=0.0, lengths=None, tie_band=0.05):
    seen = [q + rng.gauss(0, sigma) + (position_pull if j == 0 else 0.0) + length_pull * (lengths[j] / 60)
            for j, q in enumerate(quality)]
    order = sorted(range(len(quality)), key=lambda j: -seen[j])
    groups = [[order[0]]]
    for j in order[1:]:
        if abs(seen[groups[-1][-1]] - seen[j]) < tie_band:
            groups[-1].append(j)
        else:
            groups.append([j])
    return [["abc"[j] for j in group] for group in groups]


def _figures(tmp_path, name, labelers, seed=0):
    tasks, truth = _world(seed=seed)
    rng = random.Random(seed + 1)
    judgments = []
    for task, quality in zip(tasks, truth):
        lengths = [len(c["content"]) for c in task["candidates"]]
        judgments.append([{"annotator": who, "ranking": _judge(rng, quality, lengths=lengths, **how),
                           "lead_time": rng.uniform(20, 40)} for who, how in labelers.items()])
    export = label_studio_export(tasks, judgments, tmp_path / f"{name}.json")
    # the known answers of the gold items stay in tasks.jsonl (never in the Label Studio data): ingest reads them there
    write_tasks(tasks, tmp_path / f"{name}-tasks")
    ingest("label-studio", export, tmp_path / name, tasks_path=tmp_path / f"{name}-tasks" / "tasks.jsonl")
    return stats(tmp_path / name)


def test_agreement_falls_as_labeler_noise_rises(tmp_path):
    alphas = []
    for sigma in (0.1, 0.6, 2.5):
        figures = _figures(tmp_path, f"s{sigma}", {f"lab{i}": {"sigma": sigma} for i in range(3)})
        alphas.append(figures["agreement"]["preference_alpha_ordinal"])
    assert alphas[0] > 0.8
    assert alphas[0] > alphas[1] > alphas[2]
    assert alphas[2] < 0.3


def test_the_noisy_labeler_stands_out(tmp_path):
    figures = _figures(tmp_path, "mix", {"steady1": {"sigma": 0.1}, "steady2": {"sigma": 0.1}, "steady3": {"sigma": 0.1},
                                         "noisy": {"sigma": 3.0}})
    rows = figures["labelers"]
    assert rows["noisy"]["agreement_with_consensus"] < min(rows[f"steady{i}"]["agreement_with_consensus"] for i in (1, 2, 3)) - 0.2
    assert rows["noisy"]["gold_accuracy"] < rows["steady1"]["gold_accuracy"]
    assert rows["steady1"]["gold_accuracy"] > 0.85


def test_position_and_length_bias_are_detected(tmp_path):
    neutral = _figures(tmp_path, "neutral", {"a": {"sigma": 0.3}, "b": {"sigma": 0.3}})
    biased = _figures(tmp_path, "biased", {"a": {"sigma": 0.3, "position_pull": 2.0}, "b": {"sigma": 0.3, "length_pull": 3.0}})
    assert abs(neutral["position_bias_first_shown_wins"] - 0.5) < 0.12
    assert abs(neutral["length_bias_longer_wins"] - 0.5) < 0.12
    assert biased["position_bias_first_shown_wins"] > neutral["position_bias_first_shown_wins"] + 0.1
    assert biased["length_bias_longer_wins"] > neutral["length_bias_longer_wins"] + 0.1


def test_tie_rate_and_time_outliers(tmp_path):
    tasks, truth = _world(n_tasks=20)
    judgments = [[{"annotator": "fast", "ranking": [["a", "b", "c"]] if i % 2 else [["a"], ["b"], ["c"]],
                   "lead_time": 0.5 if i == 3 else 30.0 + i % 5}] for i in range(20)]
    export = label_studio_export(tasks, judgments, tmp_path / "e.json")
    ingest("label-studio", export, tmp_path / "in")
    figures = stats(tmp_path / "in")
    assert figures["tie_rate"] == 0.5
    assert figures["time"]["outliers"] == 1 and figures["time"]["outlier_examples"][0]["time_spent_s"] == 0.5
    assert figures["agreement"]["preference_alpha_ordinal"] is None  # one labeler: nothing to agree with


def test_pair_values_signs():
    assert pair_values([["b"], ["a", "c"]], ["a", "b", "c"]) == {("a", "b"): -1, ("a", "c"): 0, ("b", "c"): 1}


def test_stats_cli_prints_a_table(tmp_path, capsys):
    _figures(tmp_path, "cli", {"x": {"sigma": 0.2}, "y": {"sigma": 0.2}})
    assert main(["stats", str(tmp_path / "cli"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "preference alpha (ordinal)" in out and "position bias" in out and "\nx " in out
    assert (tmp_path / "s.json").exists()
