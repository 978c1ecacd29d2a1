"""The loop back to labelers for free text: worst eval answers -> rewrite tasks -> Label Studio
export -> ingest -> SFT rows and comparisons (rewrite > original); demonstration tasks likewise."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from labeling.build import build
from labeling.cli import main
from labeling.ingest import ingest
from labeling.tasks import label_studio_writing_export, worst_answers


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _eval_run(tmp_path, *, scored=True):
    """RUN/sft/eval_answers.jsonl as the runner writes it, plus the reward the integrator adds."""
    rows = []
    for i in range(6):
        row = {"id": f"q{i}", "prompt": f"What is the river of town {i}?", "greedy": f"Answer {i}.", "sampled": f"Maybe {i}."}
        if scored:
            row["reward"] = [0.5, -2.0, 1.5, -0.5, -3.0, 0.0][i]
        rows.append(row)
    rows.append({"id": "t0", "prompt": "Test prompt?", "greedy": "Worst of all.", "sampled": "x", "reward": -9.0, "split": "test"})
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "eval_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_from_eval_worst_n_exports_rewrite_tasks(tmp_path, capsys):
    run = _eval_run(tmp_path)
    assert main(["tasks", "--from-eval", str(run), "--worst", "3", "--out", str(tmp_path / "t")]) == 0
    assert "3 rewrite tasks from the 3 worst of 7 answers (left out: test_split 1)" in capsys.readouterr().out
    tasks = _lines(tmp_path / "t" / "tasks.jsonl")
    # lowest reward first; the test-split answer is never picked (nothing is tuned on test)
    assert [t["original"] for t in tasks] == ["Answer 4.", "Answer 1.", "Answer 3."]
    assert [t["score"] for t in tasks] == [-3.0, -2.0, -0.5]
    assert all(t["kind"] == "writing_task" and t["mode"] == "rewrite" and t["original_model"] == "sft" for t in tasks)
    assert tasks[0]["prompt"] == [{"role": "user", "content": "What is the river of town 4?"}]

    imported = json.loads((tmp_path / "t" / "label_studio_import.json").read_text())
    assert imported[0]["data"]["original"] == "Answer 4." and imported[0]["data"]["task_kind"] == "rewrite"
    config = ET.fromstring((tmp_path / "t" / "label_studio_config.xml").read_text())
    original = next(t for t in config.iter("Text") if t.get("name") == "original")
    assert original.get("value") == "$original"  # the original is shown
    box = next(config.iter("TextArea"))
    assert box.get("name") == "rewrite" and box.get("toName") == "original"
    assert config.find("Paragraphs").get("value") == "$prompt"


def test_rewrite_export_ingests_as_rewrites_and_builds_sft_rows_and_comparisons(tmp_path, capsys):
    run = _eval_run(tmp_path)
    assert main(["tasks", "--from-eval", str(run), "--worst", "2", "--out", str(tmp_path / "t")]) == 0
    tasks = _lines(tmp_path / "t" / "tasks.jsonl")
    export = label_studio_writing_export(tasks, [
        [{"annotator": "ana", "text": "The Umber runs through town 4.", "flags": ["hallucination"], "lead_time": 60.0},
         {"annotator": "bo", "text": "x", "was_cancelled": True}],
        [{"annotator": "bo", "text": "Answer 1."}],  # submitted unchanged: not a rewrite
    ], tmp_path / "export.json")
    assert main(["ingest", "--format", "label-studio", str(export), "--out", str(tmp_path / "in"),
                 "--tasks", str(tmp_path / "t" / "tasks.jsonl")]) == 0
    summary = json.loads((tmp_path / "in" / "summary.json").read_text())
    assert summary["read"] == summary["accepted"] + summary["rejected"] == 3
    assert summary["kinds"] == {"rewrite": 1} and summary["reasons"] == {"status_cancelled": 1, "identical_replies": 1}
    record = _lines(tmp_path / "in" / "accepted.jsonl")[0]
    assert (record["original"], record["reply"], record["flags"]) == ("Answer 4.", "The Umber runs through town 4.", ["hallucination"])
    assert record["task_id"] == tasks[0]["task_id"] and record["labeler"]["id"] == "ana"

    built = build(tmp_path / "in", tmp_path / "data", eval_fraction=0.0)
    assert (built["sft_train"], built["comparisons_train"]) == (1, 1)
    sft = _lines(tmp_path / "data" / "sft_train.jsonl")[0]
    assert sft["messages"][-1] == {"role": "assistant", "content": "The Umber runs through town 4."}
    pair = _lines(tmp_path / "data" / "comparisons_train.jsonl")[0]
    assert pair["chosen"][0]["content"] == "The Umber runs through town 4." and pair["rejected"][0]["content"] == "Answer 4."
    assert pair["prompt"] == sft["messages"][:-1]
    assert built["by_source"][str(tmp_path / "in")]["kinds"] == {"rewrite": {"records": 1, "sft_rows": 1, "comparison_rows": 1}}


def test_from_eval_without_scores_is_one_line(tmp_path, capsys):
    run = _eval_run(tmp_path, scored=False)
    assert main(["tasks", "--from-eval", str(run), "--worst", "3", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval_answers.jsonl has no scores" in err
    assert not (tmp_path / "t" / "tasks.jsonl").exists()


def test_from_eval_finds_the_latest_stage_or_the_one_named(tmp_path, capsys):
    run = _eval_run(tmp_path)
    (run / "ppo").mkdir()
    (run / "ppo" / "eval_answers.jsonl").write_text(json.dumps({"prompt": "P?", "greedy": "PPO answer.", "score": -1.0}) + "\n")
    assert main(["tasks", "--from-eval", str(run), "--worst", "5", "--out", str(tmp_path / "latest")]) == 0
    assert [t["original"] for t in _lines(tmp_path / "latest" / "tasks.jsonl")] == ["PPO answer."]
    assert main(["tasks", "--from-eval", str(run), "--stage", "sft", "--worst", "1", "--out", str(tmp_path / "sft")]) == 0
    assert [t["original"] for t in _lines(tmp_path / "sft" / "tasks.jsonl")] == ["Answer 4."]
    assert main(["tasks", "--from-eval", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()


def test_worst_answers_breaks_ties_with_flags_and_ranks_flags_alone():
    rows = [{"prompt": [], "answer": "a", "score": -1.0, "flags": []},
            {"prompt": [], "answer": "b", "score": -1.0, "flags": ["harmful"]},
            {"prompt": [], "answer": "c", "score": 2.0, "flags": []}]
    picked, _ = worst_answers(rows, 2)
    assert [r["answer"] for r in picked] == ["b", "a"]
    flagged_only = [{"prompt": [], "answer": "x", "flags": []}, {"prompt": [], "answer": "y", "flags": ["harmful", "hallucination"]},
                    {"prompt": [], "answer": "z", "flags": ["spam"]}]
    picked, skipped = worst_answers(flagged_only, None)
    assert [r["answer"] for r in picked] == ["y", "z"] and skipped["unscored"] == 1
    with pytest.raises(ValueError, match="has no scores"):
        worst_answers([{"prompt": [], "answer": "x"}], 1)


def test_demonstration_tasks_round_trip(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Describe town {i}."}) + "\n" for i in range(3)))
    assert main(["tasks", "--kind", "demonstration", str(prompts), "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    tasks = _lines(tmp_path / "t" / "tasks.jsonl")
    assert [t["mode"] for t in tasks] == ["demonstration"] * 3 and all(t["original"] is None for t in tasks)
    config = ET.fromstring((tmp_path / "t" / "label_studio_config.xml").read_text())
    box = next(config.iter("TextArea"))
    assert (box.get("name"), box.get("toName")) == ("reply", "prompt") and not list(config.iter("Text"))
    export = label_studio_writing_export(tasks, {tasks[0]["task_id"]: [{"annotator": "cy", "text": "Town 0 has a mill."}],
                                                 tasks[2]["task_id"]: [{"annotator": "cy", "text": "  "}]}, tmp_path / "export.json")
    summary = ingest("label-studio", export, tmp_path / "in")  # without --tasks: the export's data says what it is
    assert summary["read"] == summary["accepted"] + summary["rejected"] == 3
    assert summary["kinds"] == {"demonstration": 1} and summary["reasons"] == {"no_annotation": 1, "empty_reply": 1}
    assert _lines(tmp_path / "in" / "accepted.jsonl")[0]["reply"] == "Town 0 has a mill."


def test_rewrite_tasks_from_an_answers_file_and_tasks_usage_errors(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Bad."}],
                                   "answer": "Bad.", "score": 0.1, "model": "ckpt-7"}) + "\n")
    assert main(["tasks", "--kind", "rewrite", str(answers), "--out", str(tmp_path / "t")]) == 0
    task = _lines(tmp_path / "t" / "tasks.jsonl")[0]
    assert (task["prompt"], task["original"], task["original_model"]) == ([{"role": "user", "content": "Q?"}], "Bad.", "ckpt-7")
    for argv in (["tasks", "--kind", "demonstration", "a", "b", "--out", "o"],
                 ["tasks", "--from-eval", "run", "--kind", "demonstration", "--out", "o"],
                 ["tasks", "only-one-input", "--out", "o"],
                 ["tasks", "ckpt", "prompts", "--worst", "3", "--out", "o"]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.count("\n") == 1
