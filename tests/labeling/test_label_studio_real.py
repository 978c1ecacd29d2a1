"""Exports a real Label Studio 1.23.2 server returned (tests/fixtures/labeling/real/, captured by
tests/label_studio/test_live_server.py), and the parts of labeling.label_studio_api that need no
server. Fast, no label-studio-sdk needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from labeling.cli import main
from labeling.ingest import NothingAccepted, ingest, read_records
from labeling.label_studio_api import (ENV_KEY, Client, LabelStudioError, config_kind, default_title, push,
                                       read_tasks_dir)
from labeling.tasks import (label_studio_config, label_studio_export, label_studio_writing_export, write_tasks,
                            write_writing_tasks, writing_config)

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "labeling" / "real"
# what test_live_server.annotate did on every project: 3 tasks (the arena: 4), task 0 answered by two
# labelers and skipped by a third, task 1 answered once plus a draft never submitted, the rest once each
EXPECTED = {"comparison": 4, "demonstration": 4, "rewrite": 4, "arena": 5, "comparison_snapshot": 4}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_real_exports_ingest_with_the_counts_the_server_was_given(kind, tmp_path):
    export, tasks = REAL / f"label_studio_{kind}_export.json", REAL / f"label_studio_{kind}_tasks.jsonl"
    for tasks_path in (None, tasks):
        out = tmp_path / ("with-tasks" if tasks_path else "bare")
        summary = ingest("label-studio", export, out, tasks_path=tasks_path)
        assert summary["read"] == summary["accepted"] + summary["rejected"] == EXPECTED[kind] + 2
        assert summary["accepted"] == EXPECTED[kind]
        assert summary["reasons"] == {"status_cancelled": 1, "status_draft": 1}
        record_kind = "comparison" if kind in ("arena", "comparison_snapshot") else kind
        assert summary["kinds"] == {record_kind: EXPECTED[kind]}
        records = list(read_records(out))
        assert len({r.labeler.id for r in records}) == 3  # three annotators, each kept apart
        assert all(r.time_spent_s >= 10 for r in records)  # the 3-second draft is not among them
        rejected = {r["reason"]: r for r in _lines(out / "rejected.jsonl")}
        assert rejected["status_draft"]["part"].startswith("draft-")
    raw = json.loads(export.read_text())
    # the easy export (/api/projects/ID/export) names an annotator by user id; the snapshot export with
    # annotations__completed_by.only_id=false by {id, email, first_name, last_name}
    authors = {type(a["completed_by"]) for t in raw for a in t["annotations"]}
    assert authors == ({dict} if kind == "comparison_snapshot" else {int})
    if kind == "comparison_snapshot":
        assert {r.labeler.id for r in records} == {"ana", "bo", "cy"}


def _same(records) -> list[dict]:
    """What a record says, without where it came from (provenance, content id, labeler, ids)."""
    out = []
    for record in records:
        fields = record.model_dump(exclude={"provenance", "id", "labeler"})
        out.append(json.dumps(fields, sort_keys=True))
    return sorted(out)


@pytest.mark.parametrize("kind", ["comparison", "demonstration", "rewrite"])
def test_the_export_writer_and_the_real_export_ingest_to_the_same_records(kind, tmp_path):
    """labeling.tasks' export writer (the demo's labelers use it) and the server's export of the same
    answers give the same records."""
    tasks_path = REAL / f"label_studio_{kind}_tasks.jsonl"  # the prompt, replies and models, for both
    real = ingest("label-studio", REAL / f"label_studio_{kind}_export.json", tmp_path / "real", tasks_path=tasks_path)
    tasks = _lines(tasks_path)
    judgments: dict[str, list] = {t["task_id"]: [] for t in tasks}
    for record in read_records(tmp_path / "real"):
        if kind == "comparison":
            judgments[record.task_id].append({"annotator": record.labeler.id, "ranking": record.ranking,
                                              "ratings": record.ratings, "flags": record.flags,
                                              "rationale": record.rationale, "lead_time": record.time_spent_s})
        else:
            judgments[record.task_id].append({"annotator": record.labeler.id, "text": record.reply,
                                              "flags": list(getattr(record, "flags", []) or []), "lead_time": record.time_spent_s})
    path = tmp_path / "written.json"
    if kind == "comparison":
        label_studio_export(tasks, judgments, path)
    else:
        label_studio_writing_export(tasks, judgments, path)
    written = ingest("label-studio", path, tmp_path / "written", tasks_path=tasks_path)
    assert written["accepted"] == real["accepted"]
    assert _same(read_records(tmp_path / "written")) == _same(read_records(tmp_path / "real"))
    # the shape: the writer's task and annotation fields are the server's (the writer has file_upload, as
    # a file import does; the server's answer to an API import has none)
    raw, mine = json.loads((REAL / f"label_studio_{kind}_export.json").read_text()), json.loads(path.read_text())
    assert set(raw[0]) | {"file_upload"} == set(mine[0])
    assert set(raw[0]["annotations"][0]) == set(mine[0]["annotations"][0])
    assert all(a["result_count"] == len(a["result"]) for t in mine for a in t["annotations"])


def test_a_draft_alone_is_on_file_not_an_unannotated_task(tmp_path):
    raw = json.loads((REAL / "label_studio_demonstration_export.json").read_text())
    task = next(t for t in raw if t["drafts"])
    alone = dict(task, annotations=[], total_annotations=0)
    (tmp_path / "x.json").write_text(json.dumps([alone]))
    with pytest.raises(NothingAccepted):
        ingest("label-studio", tmp_path / "x.json", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reasons"] == {"status_draft": 1} and summary["read"] == 1


# ------------------------------------------------------------------------------------------ label_studio_api, no server


def _arena_config() -> str:
    import importlib

    for name in ("pipeline.eval.arena.human", "pipeline.arena"):
        try:
            return importlib.import_module(name).PAIRWISE_CONFIG
        except (ImportError, AttributeError):
            continue
    raise AssertionError("no arena PAIRWISE_CONFIG")


def test_config_kind_tells_chatsmiths_configs_apart():
    assert config_kind(label_studio_config(4)) == "comparison"
    assert config_kind(writing_config("demonstration")) == "demonstration"
    assert config_kind(writing_config("rewrite")) == "rewrite"
    assert config_kind(_arena_config()) == "arena"
    foreign = '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text"><Choice value="P"/></Choices></View>'
    assert config_kind(foreign) is None and config_kind("<View") is None and config_kind("") is None


def _tasks_dir(tmp_path: Path) -> Path:
    write_tasks([{"prompt": [{"role": "user", "content": "Q?"}], "candidates": [{"content": "A."}, {"content": "B."}]}],
                tmp_path / "cmp")
    return tmp_path / "cmp"


def test_read_tasks_dir_and_its_one_line_errors(tmp_path):
    tasks = read_tasks_dir(_tasks_dir(tmp_path))
    assert tasks.kind == "comparison" and len(tasks.rows) == 1 == len(tasks.task_ids)
    write_writing_tasks([{"prompt": [{"role": "user", "content": "Q?"}]}], tmp_path / "demo", mode="demonstration")
    assert read_tasks_dir(tmp_path / "demo").kind == "demonstration"
    with pytest.raises(LabelStudioError, match="no such tasks directory"):
        read_tasks_dir(tmp_path / "nowhere")
    (tmp_path / "cmp" / "label_studio_import.json").unlink()
    with pytest.raises(LabelStudioError, match="no label_studio_import.json"):
        read_tasks_dir(tmp_path / "cmp")
    # a demonstration tasks.jsonl under a ranking config
    (tmp_path / "demo" / "label_studio_config.xml").write_text(label_studio_config(2))
    with pytest.raises(LabelStudioError, match="config is for comparison tasks"):
        read_tasks_dir(tmp_path / "demo")


def test_default_titles_fit_label_studio(tmp_path):
    assert default_title(tmp_path / "run7" / "arena" / "human" / "tasks", "arena") == "chatsmith arena: run7"
    assert default_title(tmp_path / "batch-3", "comparison") == "chatsmith ranking: batch-3"
    assert len(default_title(tmp_path / ("x" * 80), "rewrite")) == 50


def test_missing_sdk_key_and_url_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)  # as if the extra were not installed
    with pytest.raises(LabelStudioError, match=r"pip install 'chatsmith\[label-studio\]'"):
        Client("http://localhost:8080", api_key="x.y.z")
    monkeypatch.delenv(ENV_KEY, raising=False)
    with pytest.raises(LabelStudioError, match="no API key for Label Studio at http://localhost:8080: create a personal access token"):
        push(_tasks_dir(tmp_path), "http://localhost:8080")
    for argv, needle in ((["push", str(tmp_path / "cmp"), "--label-studio", "http://localhost:8080"], "LABEL_STUDIO_API_KEY"),
                         (["pull", "--label-studio", "localhost:8080", "--project", "1", "--out", str(tmp_path / "o")], "not a server URL"),
                         (["push", str(tmp_path / "none"), "--label-studio", "http://h:1"], "no such tasks directory")):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("chatsmith labels: error: ") and needle in err, err
    monkeypatch.setenv(ENV_KEY, "x.y.z")
    assert main(["pull", "--label-studio", "http://localhost:8080", "--project", "1", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'chatsmith[label-studio]'" in capsys.readouterr().err
