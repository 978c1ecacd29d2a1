from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from labeling.ingest import NothingAccepted, ingest
from labeling.schema import guideline_version
from labeling.tasks import label_studio_export, write_tasks


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _tasks(n=4, k=3):
    return [{"prompt": [{"role": "user", "content": f"Tell me about town {i}."}],
             "candidates": [{"content": f"Town {i} reply {j}.", "model": f"sft-{j % 2}"} for j in range(k)]}
            for i in range(n)]


def test_write_tasks_files(tmp_path):
    summary = write_tasks(_tasks(), tmp_path)
    native = _lines(tmp_path / "tasks.jsonl")
    assert [t["task_id"] for t in native] == summary["task_ids"] and len(set(summary["task_ids"])) == 4
    assert native[0]["candidates"][2] == {"id": "c", "content": "Town 0 reply 2.", "model": "sft-0"}
    assert native[0]["guideline_version"] == guideline_version()
    assert write_tasks(_tasks(), tmp_path / "again")["task_ids"] == summary["task_ids"]  # stable ids

    imported = json.loads((tmp_path / "label_studio_import.json").read_text())
    assert imported[1]["data"]["task_id"] == summary["task_ids"][1]
    assert imported[1]["data"]["candidates"][0] == {"id": "a", "title": "Reply A", "body": "Town 1 reply 0."}

    config = ET.fromstring((tmp_path / "label_studio_config.xml").read_text())
    ranker = config.find("Ranker")
    assert ranker.get("toName") == config.find("List").get("name") and config.find("List").get("value") == "$candidates"
    assert [b.get("name") for b in ranker.findall("Bucket")] == ["rank_1", "rank_2", "rank_3"]
    assert {r.get("name") for r in config.iter("Rating")} == {"overall_a", "overall_b", "overall_c"}


def test_label_studio_round_trip_matches_tasks_by_id(tmp_path):
    tasks = _tasks()
    ids = write_tasks(tasks, tmp_path / "tasks")["task_ids"]
    judgments = {
        ids[0]: [{"annotator": "ann", "ranking": [["b"], ["a", "c"]], "ratings": {"b": {"overall": 6}, "a": {"overall": 3}},
                  "flags": {"c": ["hallucination"]}, "rationale": "b is right", "lead_time": 20.0},
                 {"annotator": "bob", "ranking": [["a"], ["b"], ["c"]], "was_cancelled": True}],
        ids[2]: [{"annotator": "bob", "ranking": [["c"], ["b"], ["a"]], "lead_time": 8.5}],
    }
    export = label_studio_export(tasks, judgments, tmp_path / "export.json")
    raw = json.loads(export.read_text())
    assert [t["id"] for t in raw] == [1, 2, 3, 4] and raw[0]["cancelled_annotations"] == 1
    ann = raw[0]["annotations"][0]
    assert ann["result"][0]["type"] == "ranker" and ann["result"][0]["value"]["ranker"] == {"rank_1": ["b"], "rank_2": ["a", "c"]}
    assert {"was_cancelled", "lead_time", "completed_by", "ground_truth", "task"} <= ann.keys()

    summary = ingest("label-studio", export, tmp_path / "in", tasks_path=tmp_path / "tasks" / "tasks.jsonl")
    assert (summary["accepted"], summary["reasons"]) == (2, {"status_cancelled": 1, "no_annotation": 2})
    records = {r["labeler"]["id"]: r for r in _lines(tmp_path / "in" / "accepted.jsonl")}
    assert records["ann"]["task_id"] == ids[0] and records["bob"]["task_id"] == ids[2]
    assert records["ann"]["ranking"] == [["b"], ["a", "c"]]
    assert records["ann"]["ratings"] == {"b": {"overall": 6.0}, "a": {"overall": 3.0}}
    assert records["ann"]["flags"] == {"c": ["hallucination"]} and records["ann"]["rationale"] == "b is right"
    assert records["ann"]["time_spent_s"] == 20.0
    assert [c["model"] for c in records["ann"]["candidates"]] == ["sft-0", "sft-1", "sft-0"]
    assert records["ann"]["guideline_version"] == guideline_version()

    # without the tasks file the export alone still carries ids, candidates and models
    alone = ingest("label-studio", export, tmp_path / "alone")
    assert alone["accepted"] == 2
    assert {r["task_id"] for r in _lines(tmp_path / "alone" / "accepted.jsonl")} == {ids[0], ids[2]}


def test_annotations_of_unknown_tasks_are_set_aside(tmp_path):
    write_tasks(_tasks(2), tmp_path / "tasks")
    stray = _tasks(3)[2:]
    export = label_studio_export(stray, [[{"annotator": "x", "ranking": [["a"], ["b"], ["c"]]}]], tmp_path / "export.json")
    with pytest.raises(NothingAccepted, match="unknown_task 1") as caught:
        ingest("label-studio", export, tmp_path / "in", tasks_path=tmp_path / "tasks" / "tasks.jsonl")
    assert (caught.value.summary["accepted"], caught.value.summary["reasons"]) == (0, {"unknown_task": 1})


def test_gold_items_carry_their_answer_from_the_tasks_file_only(tmp_path):
    tasks = _tasks(1)
    tasks[0]["gold_ranking"] = [["a"], ["b"], ["c"]]
    write_tasks(tasks, tmp_path / "tasks")
    export = label_studio_export(tasks, [[{"annotator": "x", "ranking": [["a"], ["c"], ["b"]]}]], tmp_path / "export.json")
    # the answer is not in what Label Studio holds (annotators see the task data) ...
    assert "gold_ranking" not in json.loads(export.read_text())[0]["data"]
    assert "gold_ranking" not in json.loads((tmp_path / "tasks" / "label_studio_import.json").read_text())[0]["data"]
    # ... ingest recovers it from tasks.jsonl
    ingest("label-studio", export, tmp_path / "in", tasks_path=tmp_path / "tasks" / "tasks.jsonl")
    record = _lines(tmp_path / "in" / "accepted.jsonl")[0]
    assert record["gold"] is True and record["gold_ranking"] == [["a"], ["b"], ["c"]]
    # without the tasks file the export says nothing of it: an ordinary comparison
    ingest("label-studio", export, tmp_path / "alone")
    alone = _lines(tmp_path / "alone" / "accepted.jsonl")[0]
    assert alone["gold"] is False and alone["gold_ranking"] is None


def test_labels_tasks_samples_k_replies_from_a_checkpoint(tiny_assets, tmp_path):
    from labeling.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is the river of {t}?"}) + "\n" for t in ("Alder", "Brim", "Corvi")))
    code = main(["tasks", str(tiny_assets["policy"]), str(prompts), "--k", "3", "--out", str(tmp_path / "t"),
                 "--max-new-tokens", "8", "--temperature", "1.5", "--seed", "1"])
    assert code == 0
    summary = json.loads((tmp_path / "t" / "tasks_summary.json").read_text())
    assert summary["tasks"] + summary["skipped_prompts"] == 3 and summary["tasks"] >= 1
    for task in _lines(tmp_path / "t" / "tasks.jsonl"):
        assert 2 <= len(task["candidates"]) <= 3
        assert all(c["model"] == "policy" for c in task["candidates"])
        assert task["prompt"][-1]["role"] == "user"


def test_label_studio_export_rejects_misaligned_judgments(tmp_path):
    with pytest.raises(ValueError):
        label_studio_export(_tasks(2), [[]], tmp_path / "x.json")
