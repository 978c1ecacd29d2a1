"""Labeler screening: per-labeler figures with known values on hand-built sets, the flags they
raise, and what build does with them. Every expected figure is worked out here from how the set was
built (or from a published table), not read off the code's output."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from labeling.build import build
from labeling.cli import main
from labeling.ingest import ingest
from labeling.screening import NOT_ENOUGH_CONTROLS, ScreenConfig, screen, wilson
from labeling.tasks import label_studio_export, write_tasks

Z = 1.959963984540054
REPO = Path(__file__).resolve().parents[2]


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _comparison(task, who, ranking, *, k=2, gold=None, time=None, prompt=None):
    ids = "abcd"[:k]
    return {"kind": "comparison", "task_id": task, "labeler": {"id": who},
            "prompt": [{"role": "user", "content": prompt or f"question {task}"}],
            "candidates": [{"id": c, "content": f"{task} reply {c}"} for c in ids],
            "ranking": ranking, "gold_ranking": gold, "gold": gold is not None, "time_spent_s": time}


def _ingest(tmp_path, rows, name="in"):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest("native", path, tmp_path / name)
    return tmp_path / name


RIGHT, WRONG = [["a"], ["b"]], [["b"], ["a"]]


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3: 81/263 -> 0.2553-0.3662
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # closed forms at the edges: 0/n -> [0, z^2/(n+z^2)], n/n -> [n/(n+z^2), 1]
    assert wilson(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))
    assert wilson(10, 10) == (pytest.approx(10 / (10 + Z**2)), 1.0)
    assert wilson(0, 0) is None


def _pool(n_tasks=30, n_controls=12):
    """Three honest labelers (rank every task as the truth: a > b) and one who flips every comparison,
    controls included. Each labels every task and every control."""
    rows = []
    for i in range(n_tasks):
        for who in ("h1", "h2", "h3"):
            rows.append(_comparison(f"t{i}", who, RIGHT, time=10.0 + i))
        rows.append(_comparison(f"t{i}", "flip", WRONG, time=2.0))
    for i in range(n_controls):
        for who in ("h1", "h2", "h3"):
            rows.append(_comparison(f"c{i}", who, RIGHT, gold=RIGHT, time=10.0))
        rows.append(_comparison(f"c{i}", "flip", WRONG, gold=RIGHT, time=2.0))
    return rows


def test_a_labeler_who_flips_every_control_gets_accuracy_zero_and_is_flagged(tmp_path):
    screening = screen(_ingest(tmp_path, _pool()), ScreenConfig())
    flip, honest = screening.labelers["flip"], screening.labelers["h1"]
    # 12 controls, none right: accuracy 0, Wilson upper end z^2 / (12 + z^2) = 0.2425 < 0.8
    assert (flip["controls"]["n"], flip["controls"]["passed"], flip["controls"]["accuracy"]) == (12, 0, 0.0)
    assert flip["controls"]["ci95"][1] == pytest.approx(Z**2 / (12 + Z**2), abs=1e-4)
    assert flip["controls"]["status"] == "below"
    # every shared task: the three others say a > b, the flipper b > a -> agreement 0 on 30 tasks (controls left out)
    assert (flip["peer_agreement"]["tasks"], flip["peer_agreement"]["agreement"]) == (30, 0.0)
    assert screening.flagged == {"flip": ["control_accuracy", "peer_agreement"]}
    # the honest: 12/12 (lower end 12 / (12 + z^2) = 0.7575) and full agreement: the flipper is nobody's peer,
    # so each honest labeler's others are the two other honest ones
    assert honest["controls"]["accuracy"] == 1.0 and honest["controls"]["ci95"][0] == pytest.approx(12 / (12 + Z**2), abs=1e-4)
    assert (honest["peer_agreement"]["tasks"], honest["peer_agreement"]["agreement"]) == (30, 1.0)
    assert "0/12" in screening.detail["flip"]
    # time per task: h1 spent 10 + i on task i (i < 30) and 10 on each of 12 controls -> median of
    # [10]*13 + [11..39]: the 21st and 22nd of 42 sorted values are 18 and 19 -> 18.5
    assert screening.labelers["h1"]["time_s"]["median"] == 18.5 and screening.labelers["flip"]["time_s"]["median"] == 2.0


def test_a_labeler_with_too_few_controls_is_reported_not_flagged(tmp_path):
    source = _ingest(tmp_path, _pool(n_tasks=0, n_controls=4))
    screening = screen(source, ScreenConfig(min_controls=10))
    flip = screening.labelers["flip"]["controls"]
    # the figures are there (0/4, upper end z^2 / (4 + z^2) = 0.4899) but 4 < 10 controls: no flag on them
    assert (flip["n"], flip["accuracy"], flip["status"]) == (4, 0.0, NOT_ENOUGH_CONTROLS)
    assert flip["ci95"][1] == pytest.approx(Z**2 / (4 + Z**2), abs=1e-4)
    assert screening.flagged == {}
    assert screening.labelers["flip"]["peer_agreement"]["status"] == "not_enough_shared_tasks"  # no regular task at all
    # the floor is what held the flag back: at min_controls 4 the same figures flag
    assert screen(source, ScreenConfig(min_controls=4)).flagged == {"flip": ["control_accuracy"]}


def _binomial_tail(n, at_least, p=0.5):
    return sum(math.comb(n, h) * p**h * (1 - p) ** (n - h) for h in range(at_least, n + 1))


def test_a_random_labeler_is_flagged_at_a_size_where_that_is_expected(tmp_path):
    n_controls, n_tasks, threshold = 80, 300, ScreenConfig()
    # controls: flagged when the Wilson upper end is below 0.8, i.e. when hits < h_star
    h_star = next(h for h in range(n_controls + 1) if wilson(h, n_controls)[1] >= threshold.min_control_accuracy)
    # a coin-flipping labeler passes a pair control with probability 1/2: P(not flagged) = P(Bin(80, 1/2) >= h_star)
    assert h_star > 50 and _binomial_tail(n_controls, h_star) < 1e-3
    rng = random.Random(7)
    rows = []
    for i in range(n_tasks):
        for who in ("h1", "h2", "h3"):
            rows.append(_comparison(f"t{i}", who, RIGHT))
        rows.append(_comparison(f"t{i}", "coin", RIGHT if rng.random() < 0.5 else WRONG))
    for i in range(n_controls):
        for who in ("h1", "h2", "h3"):
            rows.append(_comparison(f"c{i}", who, RIGHT, gold=RIGHT))
        rows.append(_comparison(f"c{i}", "coin", RIGHT if rng.random() < 0.5 else WRONG, gold=RIGHT))
    screening = screen(_ingest(tmp_path, rows), threshold)
    coin = screening.labelers["coin"]
    assert coin["controls"]["passed"] < h_star and coin["controls"]["status"] == "below"
    # peer agreement: the three honest ones agree on every task, so the coin's majority is the truth and its
    # agreement is Bin(300, 1/2) / 300: within 3 standard errors (0.087) of 0.5; the bootstrap interval's upper
    # end is then about p + 1.96 * 0.029 <= 0.59 + 0.06 < 0.6
    se = math.sqrt(0.25 / n_tasks)
    assert abs(coin["peer_agreement"]["agreement"] - 0.5) < 3 * se
    assert coin["peer_agreement"]["ci95"][1] < threshold.min_peer_agreement
    assert screening.flagged == {"coin": ["control_accuracy", "peer_agreement"]}
    # the honest: their others' majority is honest (2 of 3 at least), so they agree on every pair
    assert all(screening.labelers[h]["peer_agreement"]["agreement"] == 1.0 for h in ("h1", "h2", "h3"))


def test_ties_share_and_its_interval(tmp_path):
    rows = []
    for i in range(20):  # 3 candidates -> 3 pairs a judgment; every other judgment ties b and c (1 pair of 3)
        rows.append(_comparison(f"t{i}", "tier", [["a"], ["b", "c"]] if i % 2 else [["a"], ["b"], ["c"]], k=3))
    ties = screen(_ingest(tmp_path, rows)).labelers["tier"]["ties"]
    assert (ties["pairs"], ties["share"]) == (60, round(10 / 60, 4))
    # each judgment has 0 or 1 tied pair of 3: a resample's share lies in [0, 1/3], around 1/6
    assert 0 < ties["ci95"][0] < 10 / 60 < ties["ci95"][1] < 1 / 3


def test_build_keeps_controls_out_and_excludes_flagged_labelers_with_counts_that_add_up(tmp_path):
    rows = _pool(n_tasks=30, n_controls=12)
    rows.append({"kind": "demonstration", "labeler": {"id": "flip"}, "prompt": [{"role": "user", "content": "Say hi."}],
                 "reply": "Go away."})
    source = _ingest(tmp_path, rows)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "Plain?", "chosen": "Yes.", "rejected": "No."}) + "\n")

    # screening off: the flipper's judgments train, the controls never do
    off = build(source, tmp_path / "off", eval_fraction=0.2, comparison_files=[plain])
    control_prompts = {f"question c{i}" for i in range(12)}
    for name in ("comparisons_train", "comparisons_eval"):
        assert not {r["prompt"][0]["content"] for r in _lines(tmp_path / "off" / f"{name}.jsonl")} & control_prompts
    assert off["controls"] == 12 * 4 and off["excluded"]["records"] == 0
    assert off["comparisons_train"] + off["comparisons_eval"] == 30 * 4 + 1  # one pair a 2-reply comparison + the plain row
    assert off["sft_train"] + off["sft_eval"] == 1

    # screening on, excluding: the flipper's 30 comparisons and its demonstration go to excluded.jsonl
    on = build(source, tmp_path / "on", eval_fraction=0.2, comparison_files=[plain],
               screening=ScreenConfig(exclude_flagged=True))
    assert on["read"] == 30 * 4 + 12 * 4 + 1 + 1  # records of the ingest dir + the plain row
    assert on["read"] == on["records"] + on["duplicates"] + on["controls"] + on["excluded"]["records"]
    assert on["controls"] == 48 and on["excluded"]["records"] == 31 and on["records"] == 30 * 3 + 1
    assert on["excluded"]["by_labeler"] == {"flip": {"control_accuracy+peer_agreement": 31}}
    assert on["excluded"]["by_reason"] == {"control_accuracy+peer_agreement": 31}
    assert on["comparisons_train"] + on["comparisons_eval"] == 30 * 3 + 1 and on["sft_train"] + on["sft_eval"] == 0
    kept_in = on["by_source"][str(source)]
    assert (kept_in["read"], kept_in["controls"], kept_in["excluded"]) == (30 * 4 + 12 * 4 + 1, 48, 31)
    excluded = _lines(tmp_path / "on" / "excluded.jsonl")
    assert len(excluded) == 31 and {e["labeler"] for e in excluded} == {"flip"}
    assert all(e["reasons"] == ["control_accuracy", "peer_agreement"] and e["record"]["labeler"]["id"] == "flip" for e in excluded)
    assert all(e["record"]["ranking"] == WRONG for e in excluded if e["record"]["kind"] == "comparison")
    assert json.loads((tmp_path / "on" / "screening.json").read_text())["flagged"] == {"flip": ["control_accuracy", "peer_agreement"]}
    # the split does not move with screening: the same prompts are held out either way
    held = {r["prompt"][0]["content"] for r in _lines(tmp_path / "off" / "comparisons_eval.jsonl")}
    assert held == {r["prompt"][0]["content"] for r in _lines(tmp_path / "on" / "comparisons_eval.jsonl")} and held

    # screened but not excluding: flagged and reported, nothing left out
    report = build(source, tmp_path / "report", eval_fraction=0.2, screening=ScreenConfig())
    assert report["screening"]["flagged"] == {"flip": ["control_accuracy", "peer_agreement"]}
    assert report["excluded"]["records"] == 0 and report["records"] == 30 * 4 + 1


def test_screening_reads_annotator_ids_of_label_studio_and_argilla_exports(tmp_path):
    """Label Studio's `completed_by` is an int (the JSON export) or an object with id and email (other
    versions and endpoints); Argilla's `user_id` sits on each response. Each is the labeler id screening uses."""
    task = {"id": 1, "data": {"prompt": "Which river?", "text1": "The Vell.", "text2": "The Umber."}}
    annotation = {"result": [{"type": "pairwise", "from_name": "pick", "to_name": "text1", "value": {"selected": "left"}}],
                  "was_cancelled": False, "lead_time": 12.5}
    export = [{**task, "annotations": [{**annotation, "id": 1, "completed_by": 7},
                                       {**annotation, "id": 2, "completed_by": {"id": 8, "email": "ana@vendor.example",
                                                                                "first_name": "Ana", "last_name": "R"}},
                                       {**annotation, "id": 3, "completed_by": {"id": 9}}]}]
    (tmp_path / "ls.json").write_text(json.dumps(export))
    ingest("label-studio", tmp_path / "ls.json", tmp_path / "ls")
    argilla = [{"id": "r1", "fields": {"prompt": "Which river?", "response_1": "The Vell.", "response_2": "The Umber."},
                "metadata": {}, "responses": {"ranking": [
                    {"value": [{"value": "response_1", "rank": 1}, {"value": "response_2", "rank": 2}],
                     "user_id": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "status": "submitted"}]}},
               {"id": "r2", "prompt": "Which dish?", "response_a": "Plum cake.", "response_b": "Soup.",
                "ranking.responses": [["response_a", "response_b"]], "ranking.responses.users": ["u-flat"],
                "ranking.responses.status": ["submitted"]}]
    (tmp_path / "argilla.json").write_text(json.dumps(argilla))
    ingest("argilla", tmp_path / "argilla.json", tmp_path / "argilla")
    screening = screen([tmp_path / "ls", tmp_path / "argilla"])
    assert set(screening.labelers) == {"7", "ana@vendor.example", "9", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "u-flat"}
    assert screening.labelers["7"]["time_s"]["median"] == 12.5


def test_screen_config_is_typed_frozen_and_documented():
    config = ScreenConfig()
    assert (config.min_control_accuracy, config.min_peer_agreement, config.min_controls, config.exclude_flagged) == (0.8, 0.6, 10, False)
    with pytest.raises(ValidationError):
        config.min_controls = 3  # frozen
    with pytest.raises(ValidationError, match="min_control_acuracy"):
        ScreenConfig(min_control_acuracy=0.5)  # a typo is an error, not a silent default
    with pytest.raises(ValidationError):
        ScreenConfig(min_peer_agreement=1.5)
    assert all(field.description for field in ScreenConfig.model_fields.values())
    # labeling.screening needs neither torch nor pipeline (the recipe mounts it; it does not import the recipe)
    code = ("import sys, labeling.screening, labeling.controls; "
            "print([m for m in ('torch', 'transformers', 'pipeline', 'stages') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _ls_pool(tmp_path):
    """The flipper pool through the real path: tasks with controls -> a Label Studio export -> ingest --tasks."""
    tasks = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
              "candidates": [{"content": f"Right {i}."}, {"content": f"Wrong {i}."}]} for i in range(40)]
    from labeling.controls import control_from_pair

    controls = [control_from_pair(f"Known {i}?", f"Known right {i}.", f"Known wrong {i}.") for i in range(12)]
    write_tasks(tasks, tmp_path / "t", controls=controls, control_rate=0.2)  # 40 + 10 = 50: 10 / 50 = 0.2
    native = _lines(tmp_path / "t" / "tasks.jsonl")
    judgments = {}
    for task in native:
        right = next(c["id"] for c in task["candidates"] if "right" in c["content"].lower())
        truth = [[right], [next(c["id"] for c in task["candidates"] if c["id"] != right)]]
        judgments[task["task_id"]] = [{"annotator": who, "ranking": truth if who != "flip" else truth[::-1], "lead_time": 9.0}
                                      for who in ("h1", "h2", "h3", "flip")]
    export = label_studio_export(native, judgments, tmp_path / "export.json")
    ingest("label-studio", export, tmp_path / "in", tasks_path=tmp_path / "t" / "tasks.jsonl")
    return tmp_path / "in"


def test_cli_stats_and_build_flags(tmp_path, capsys):
    source = _ls_pool(tmp_path)
    assert main(["stats", str(source), "--json", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert "flagged 1: flip: control accuracy 0/10" in out
    figures = json.loads((tmp_path / "stats.json").read_text())
    assert figures["screening"]["flagged"] == {"flip": ["control_accuracy", "peer_agreement"]}
    assert figures["screening"]["labelers"]["h1"]["controls"]["n"] == 10

    # more controls asked than there are: not flagged on controls, only on peer agreement (40 shared tasks)
    assert main(["stats", str(source), "--min-controls", "11", "--json", str(tmp_path / "few.json")]) == 0
    few = json.loads((tmp_path / "few.json").read_text())["screening"]
    assert few["labelers"]["flip"]["controls"]["status"] == NOT_ENOUGH_CONTROLS and few["flagged"] == {"flip": ["peer_agreement"]}
    assert main(["stats", str(source), "--min-peer-agreement", "0", "--min-control-accuracy", "0",
                 "--json", str(tmp_path / "none.json")]) == 0
    assert json.loads((tmp_path / "none.json").read_text())["screening"]["flagged"] == {}  # nothing is below 0

    capsys.readouterr()
    assert main(["build", str(source), "--out", str(tmp_path / "kept")]) == 0
    kept = json.loads((tmp_path / "kept" / "build.json").read_text())
    assert kept["excluded"]["records"] == 0 and kept["controls"] == 10 * 4 and kept["records"] == 40 * 4
    assert "flagged flip" in capsys.readouterr().out
    assert main(["build", str(source), "--out", str(tmp_path / "out"), "--exclude-flagged", "--min-controls", "5"]) == 0
    built = json.loads((tmp_path / "out" / "build.json").read_text())
    assert built["excluded"]["by_labeler"] == {"flip": {"control_accuracy+peer_agreement": 40}}
    assert built["read"] == 50 * 4 == built["records"] + built["controls"] + built["excluded"]["records"] + built["duplicates"]
    assert built["records"] == 40 * 3 and len(_lines(tmp_path / "out" / "excluded.jsonl")) == 40

    for argv, flag in ((["stats", str(source), "--min-control-accuracy", "1.5"], "--min-control-accuracy 1.5"),
                       (["build", str(source), "--out", str(tmp_path / "x"), "--min-controls", "0"], "--min-controls 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and flag in err, err


REAL = Path(__file__).resolve().parents[1] / "fixtures" / "labeling" / "real"


@pytest.mark.parametrize("export", ["label_studio_comparison_export.json", "label_studio_comparison_snapshot_export.json"])
def test_screening_reads_annotator_ids_of_a_real_label_studio_export(tmp_path, export):
    """Exports captured from a live Label Studio server (tests/fixtures/labeling/real): the API export gives
    `completed_by` as the user number, the snapshot export as the user object with an email."""
    raw = json.loads((REAL / export).read_text())
    tasks = REAL / export.replace("_export.json", "_tasks.jsonl")
    expected: dict[str, list[float]] = {}
    for task in raw:  # the submitted annotations' annotators and lead times, read from the raw export
        for annotation in task["annotations"]:
            if annotation["was_cancelled"]:
                continue
            who = annotation["completed_by"]
            who = who["email"].removesuffix("@labelers.local") if isinstance(who, dict) else str(who)
            expected.setdefault(who, []).append(annotation["lead_time"])
    assert len(expected) >= 2
    ingest("label-studio", REAL / export, tmp_path / "in", tasks_path=tasks)
    screening = screen(tmp_path / "in")
    assert set(screening.labelers) == set(expected)
    for who, times in expected.items():
        row = screening.labelers[who]
        assert row["comparisons"] == len(times) and row["time_s"]["median"] == pytest.approx(statistics.median(times))
        assert row["controls"]["status"] == "not_enough_controls"  # the captured batch has no controls
    assert screening.flagged == {}
