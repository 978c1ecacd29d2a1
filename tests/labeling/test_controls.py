"""Control tasks: mixed into a batch at the rate asked, their known answer only in tasks.jsonl, and
nothing Label Studio holds tells a control from any other task."""

from __future__ import annotations

import json
import re

import pytest

from labeling.cli import main
from labeling.controls import ControlsError, control_from_pair, controls_wanted, mix_controls, read_controls
from labeling.ingest import ingest
from labeling.tasks import label_studio_export, write_tasks


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _batch(n, k=3):
    return [{"prompt": [{"role": "user", "content": f"What is the dish of town {i}?"}],
             "candidates": [{"content": f"Town {i}, reply {j}.", "model": f"sft-{j % 2}"} for j in range(k)]} for i in range(n)]


def _controls(n, k=3):
    return [control_from_pair(f"What is the river of town {i}?", f"The river of town {i} is the Vell.",
                              [f"Town {i} has no river, reply {j}." for j in range(k - 1)]) for i in range(n)]


def _shape(data: dict) -> tuple:
    """Everything about a task's Label Studio data but its text: key order, types, ids' pattern and
    length, candidate ids and titles."""
    def skeleton(value):
        if isinstance(value, dict):
            return tuple((k, skeleton(v)) for k, v in value.items())
        if isinstance(value, list):
            return tuple(skeleton(v) for v in value)
        return type(value).__name__
    return (skeleton(data), re.sub(r"[0-9a-f]", "h", data["task_id"]), data["guideline_version"],
            tuple((c["id"], c["title"]) for c in data["candidates"]), tuple(m["role"] for m in data["prompt"]))


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    else:
        yield str(value)


def test_controls_are_mixed_at_the_rate_asked(tmp_path):
    for n, rate, expected in ((190, 0.05, 10), (80, 0.2, 20), (30, 0.1, 3)):
        # expected: the m with m / (n + m) == rate (190 + 10 = 200, 10/200 = 0.05; 20/100; 3.33 -> 3)
        mixed, counts = mix_controls(_batch(n), _controls(40), rate, seed=1)
        controls = [t for t in mixed if t.gold_ranking is not None]
        assert len(controls) == counts["controls"] == controls_wanted(n, rate) == expected
        assert len(mixed) == n + expected
        # the regular tasks keep their order; the controls sit at random places, not in a block
        assert [t.prompt[0].content for t in mixed if t.gold_ranking is None] == [t["prompt"][0]["content"] for t in _batch(n)]
    positions = [i for i, t in enumerate(mix_controls(_batch(190), _controls(40), 0.05, seed=1)[0]) if t.gold_ranking]
    other_seed = [i for i, t in enumerate(mix_controls(_batch(190), _controls(40), 0.05, seed=2)[0]) if t.gold_ranking]
    assert positions != list(range(190, 200)) and positions != list(range(10)) and positions != other_seed
    # a file with fewer controls than wanted: each is used once, and the shortfall is counted
    mixed, counts = mix_controls(_batch(190), _controls(4), 0.05)
    assert (counts["controls"], counts["controls_wanted"], counts["controls_available"]) == (4, 10, 4)
    assert len({t.task_id for t in mixed}) == 194


def test_a_control_looks_like_any_other_task_in_label_studio(tmp_path):
    summary = write_tasks(_batch(57), tmp_path / "t", controls=_controls(20), control_rate=0.05, seed=3)
    native = _lines(tmp_path / "t" / "tasks.jsonl")
    imported = json.loads((tmp_path / "t" / "label_studio_import.json").read_text())
    is_control = [t["gold_ranking"] is not None for t in native]
    assert sum(is_control) == summary["controls"] == 3  # 57 + 3 = 60, 3/60 = 0.05
    assert [t["task_id"] for t in native] == [t["data"]["task_id"] for t in imported]  # the same order both sides

    # one shape for every task: same fields in the same order, same id pattern, candidate ids, titles
    assert len({_shape(t["data"]) for t in imported}) == 1
    assert all(set(t) == {"data"} for t in imported)
    assert all(re.fullmatch(r"t-[0-9a-f]{16}", t["data"]["task_id"]) for t in imported)
    # nothing a labeler can read names a control or carries its answer, or a model
    for task in imported:
        text = " ".join(_strings(task)).lower()
        assert "gold" not in text and "control" not in text and "sft-" not in text
    # and a simulated Label Studio export of the batch: tasks of one shape too
    export = label_studio_export(native, {t["task_id"]: [{"annotator": "x", "ranking": [["a"], ["b"], ["c"]]}] for t in native},
                                 tmp_path / "export.json")
    exported = json.loads(export.read_text())
    assert len({_shape(t["data"]) for t in exported}) == 1
    assert len({tuple(t) for t in exported}) == 1 and not any("gold" in " ".join(_strings(t)).lower() for t in exported)

    # the known answer follows the shuffled candidates: the right reply is in the first group, under its new id
    controls = [t for t in native if t["gold_ranking"] is not None]
    for task in controls:
        right = next(c["id"] for c in task["candidates"] if "is the Vell" in c["content"])
        assert task["gold_ranking"][0] == [right] and sorted(task["gold_ranking"][1]) == sorted({"a", "b", "c"} - {right})
    shown_first = {next(c.id for c in t.candidates if "is the Vell" in c.content)
                   for t in mix_controls(_batch(190), _controls(40), 0.05, seed=0)[0] if t.gold_ranking}
    assert len(shown_first) > 1  # not always reply A (10 controls, 3 places: all on one has chance 3 / 3**10)

    # ingest with the tasks file recovers the answer; the control's judgment is marked gold
    ingest("label-studio", export, tmp_path / "in", tasks_path=tmp_path / "t" / "tasks.jsonl")
    records = _lines(tmp_path / "in" / "accepted.jsonl")
    assert sorted(r["task_id"] for r in records if r["gold"]) == sorted(t["task_id"] for t in controls)


def test_controls_file_format_and_errors(tmp_path):
    good = tmp_path / "controls.jsonl"
    good.write_text(
        json.dumps({"prompt": "What is the river of Alder?", "better": "The Vell.", "worse": ["The Umber.", "Go away."]}) + "\n\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Emblem of Brim?"}], "note": "from the guidelines",
                      "candidates": [{"id": "right", "content": "A lynx."}, {"id": "wrong", "content": "An owl."},
                                     {"id": "rude", "content": "Look it up."}],
                      "gold_ranking": [["right"], ["wrong", "rude"]]}) + "\n")
    first, second = read_controls(good)
    assert [c.content for c in first.candidates] == ["The Vell.", "The Umber.", "Go away."]
    assert first.gold_ranking == [["a"], ["b", "c"]]
    assert second.gold_ranking == [["right"], ["wrong", "rude"]] and second.prompt[0].content == "Emblem of Brim?"

    bad_lines = {
        json.dumps({"prompt": "Q?", "better": "A."}): "missing key `worse`",
        json.dumps({"prompt": "Q?", "better": "A.", "worse": "B.", "ranking": [["a"]]}): "unknown key(s) ['ranking']",
        json.dumps({"prompt": "Q?", "candidates": [{"content": "A."}, {"content": "B."}], "gold_ranking": [["a", "b"]]}):
            "at least two groups",
        json.dumps({"prompt": "Q?", "candidates": [{"content": "A."}, {"content": "B."}], "gold_ranking": [["a"], ["z"]]}):
            "does not rank each of the candidates",
        json.dumps({"prompt": "Q?", "better": "Same.", "worse": "Same."}): "same text",
        "not json": "not JSON",
    }
    for line, message in bad_lines.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"prompt": "Fine?", "better": "Yes.", "worse": "No."}) + "\n" + line + "\n")
        with pytest.raises(ControlsError) as caught:
            read_controls(path)
        assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value), str(caught.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ControlsError, match="has no controls"):
        read_controls(empty)


def test_only_controls_with_a_candidate_count_the_batch_has_are_used():
    mixed, counts = mix_controls(_batch(95, k=3), _controls(10, k=2) + _controls(10, k=3), 0.05)
    assert counts["controls"] == 5 and counts["controls_wrong_size"] == 10
    assert all(len(t.candidates) == 3 for t in mixed)
    with pytest.raises(ControlsError, match=r"candidate count the batch's tasks have \(\[3\]\)"):
        mix_controls(_batch(95, k=3), _controls(10, k=2), 0.05)


def test_a_control_takes_the_batch_id_scheme_or_refuses():
    arena_like = [{**t, "task_id": f"arena-{i:016x}"} for i, t in enumerate(_batch(40))]
    mixed, _ = mix_controls(arena_like, _controls(5), 0.1)
    assert all(re.fullmatch(r"arena-[0-9a-f]{16}", t.task_id) for t in mixed)
    numbered = [{**t, "task_id": f"demo-rlhf-{i}"} for i, t in enumerate(_batch(40))]
    with pytest.raises(ControlsError, match="would stand out"):
        mix_controls(numbered, _controls(5), 0.1)
    lettered = [{**t, "candidates": [{**c, "id": f"r{j}"} for j, c in enumerate(t["candidates"])]} for t in _batch(40)]
    with pytest.raises(ControlsError, match="not a, b, c"):
        mix_controls(lettered, _controls(5), 0.1)
    # no controls, or a zero rate: the batch as it was, whatever its ids
    assert [t.task_id for t in mix_controls(numbered, [], 0.05)[0]] == [f"demo-rlhf-{i}" for i in range(40)]


@pytest.mark.parametrize("argv, message", [
    (["tasks", "ckpt", "prompts.jsonl", "--out", "o", "--control-rate", "0.1"], "--control-rate needs --controls FILE"),
    (["tasks", "--kind", "demonstration", "prompts.jsonl", "--out", "o", "--controls", "c.jsonl"],
     "--controls and --control-rate apply to comparison tasks"),
    (["tasks", "ckpt", "prompts.jsonl", "--out", "o", "--controls", "c.jsonl", "--control-rate", "1.5"],
     "--control-rate must be in [0, 1), got 1.5"),
    (["tasks", "ckpt", "prompts.jsonl", "--out", "o", "--controls", "missing.jsonl"], "--controls missing.jsonl: no such file"),
])
def test_controls_flags_misused_are_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Q?"}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": "Q?", "better": "A.", "worse": "B."}) + "\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_labels_tasks_mixes_controls_from_a_file(tiny_assets, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is the river of {t}?"}) + "\n"
                               for t in ("Alder", "Brim", "Corvi", "Dunmore", "Elsk", "Fenn")))
    controls = tmp_path / "controls.jsonl"
    controls.write_text("".join(json.dumps({"prompt": f"Which town is number {i}?", "better": f"Town {i}.",
                                            "worse": [f"Not town {i}.", "I will not say."][: k - 1]}) + "\n"
                                for i in range(6) for k in (2, 3)))
    code = main(["tasks", str(tiny_assets["policy"]), str(prompts), "--k", "3", "--out", str(tmp_path / "t"),
                 "--max-new-tokens", "8", "--temperature", "1.5", "--seed", "1",
                 "--controls", str(controls), "--control-rate", "0.25"])
    assert code == 0
    summary = json.loads((tmp_path / "t" / "tasks_summary.json").read_text())
    native = _lines(tmp_path / "t" / "tasks.jsonl")
    regular = [t for t in native if t["gold_ranking"] is None]
    control = [t for t in native if t["gold_ranking"] is not None]
    assert len(regular) == summary["tasks"] - summary["controls"] == 6 - summary["skipped_prompts"]
    assert len(control) == summary["controls"] == controls_wanted(len(regular), 0.25) == round(len(regular) / 3)
    assert {len(t["candidates"]) for t in control} <= {len(t["candidates"]) for t in regular}
    assert f"{len(control)} of them are controls" in capsys.readouterr().out
    imported = {t["data"]["task_id"]: t["data"] for t in json.loads((tmp_path / "t" / "label_studio_import.json").read_text())}
    # every control has the shape of some sampled task (the same fields, ids and titles for its K)
    assert {_shape(imported[t["task_id"]]) for t in control} <= {_shape(imported[t["task_id"]]) for t in regular}
    assert not any("gold" in " ".join(_strings(t)) for t in imported.values())
