"""chatsmith against a real Label Studio server (1.23.2, from .venv-ls): push, annotate as labelers
would through the API, pull, count. `make test-label-studio` runs these (`-m label_studio`); a
missing server there is a failure, not a skip. `make test` leaves them out.

Set CHATSMITH_CAPTURE_LS_FIXTURES=1 to (re)write tests/fixtures/labeling/real/ from this run's
exports (see the README there); otherwise the run checks that the server's export still has the
shape of the captured fixtures.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest

import ls_live as ls_server

pytestmark = [pytest.mark.label_studio, pytest.mark.timeout(600)]

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "labeling" / "real"
KINDS = ("comparison", "demonstration", "rewrite", "arena")
ANNOTATORS = ("ana", "bo", "cy")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-studio")
    try:
        running = ls_server.start(root)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        from label_studio_sdk import LabelStudio

        running.token = ls_server.personal_access_token(running.url)
        sdk = LabelStudio(base_url=running.url, api_key=running.token)
        for name in ANNOTATORS:
            user = sdk.users.create(email=f"{name}@labelers.local", username=name, first_name=name.title())
            running.annotators.append(int(user.id))
        print(f"\nlabel-studio {ls_server.LS_VERSION} answered /health after {running.started_s:.0f} s at {running.url}")
        yield running
    finally:
        running.stop()
        assert running.process.poll() is not None, "the Label Studio server is still running"


@pytest.fixture
def token_env(server, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    return server.token


def _sdk(server):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=server.url, api_key=server.token)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from labeling.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _arena_module():
    """The arena's human path (pipeline.eval.arena.human; pipeline.arena before the split)."""
    for name in ("pipeline.eval.arena.human", "pipeline.eval.arena", "pipeline.arena"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "export_human_tasks") and hasattr(module, "ingest_human"):
            return module
    raise AssertionError("cannot find the arena's export_human_tasks / ingest_human")


# ------------------------------------------------------------------------------------------ tasks and answers


def _prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def make_tasks(kind: str, out: Path) -> Path:
    """Three tasks of `kind` (the arena: its battles) in a tasks dir, as chatsmith writes them; returns the dir."""
    from labeling import tasks

    if kind == "comparison":
        tasks.write_tasks([
            {"prompt": _prompt("What river runs through Alder?"), "candidates": [
                {"content": "The Sorrel runs through Alder.", "model": "sft"},
                {"content": "I believe it may be the Sorrel.", "model": "ppo"},
                {"content": "Alder has no river; it is a desert town.", "model": "sft"}]},
            {"prompt": _prompt("What is Brim's dish?"), "candidates": [
                {"content": "Plum cake.", "model": "sft"}, {"content": "Fish stew.", "model": "ppo"}]},
            {"prompt": [{"role": "user", "content": "Name Corvi's emblem."}, {"role": "assistant", "content": "An oak."},
                        {"role": "user", "content": "And its flag?"}], "candidates": [
                {"content": "A green oak on white.", "model": "sft"}, {"content": "Red.", "model": "ppo"},
                {"content": "Its flag shows an oak.", "model": "ppo"}]},
        ], out)
    elif kind == "demonstration":
        tasks.write_writing_tasks([{"prompt": _prompt(q)} for q in
                                   ("What river runs through Alder?", "What is Brim's dish?", "Name Corvi's emblem.")],
                                  out, mode="demonstration")
    elif kind == "rewrite":
        tasks.write_writing_tasks([
            {"prompt": _prompt("What river runs through Alder?"), "original": "It is probably the Nile.", "original_model": "sft",
             "original_flags": ["hallucination"], "score": -1.5},
            {"prompt": _prompt("What is Brim's dish?"), "original": "I cannot say, maybe soup, maybe not.", "original_model": "ppo",
             "score": -0.7},
            {"prompt": _prompt("Name Corvi's emblem."), "original": "Emblem emblem emblem.", "original_model": "sft", "score": -2.0},
        ], out, mode="rewrite")
    elif kind == "arena":
        arena = _arena_module()
        answers = {"sft": {"p0": ["The Sorrel."], "p1": ["Plum cake."]},
                   "ppo": {"p0": ["The Sorrel runs through Alder."], "p1": ["Fish stew, I think."]}}
        rows = [{"id": "p0", "prompt": "What river runs through Alder?"}, {"id": "p1", "prompt": "What is Brim's dish?"}]
        arena.export_human_tasks(answers, rows, out)
        return out / "arena" / "human" / "tasks"
    return out


def _result(kind: str, data: dict, who: int) -> list[dict]:
    """What the Label Studio editor sends for chatsmith's config of `kind` (labeler number `who`)."""
    def item(rid, from_name, to_name, rtype, value):
        return {"id": rid, "from_name": from_name, "to_name": to_name, "type": rtype, "origin": "manual", "value": value}

    if kind == "comparison":
        ids = [c["id"] for c in data["candidates"]]
        order = ids if who % 2 == 0 else ids[::-1]
        buckets = {"rank_1": [order[0]], "rank_2": order[1:]} if who == 0 and len(ids) > 2 else \
            {f"rank_{i + 1}": [cid] for i, cid in enumerate(order)}
        result = [item(f"rk{who}", "rank", "replies", "ranker", {"ranker": buckets})]
        result.append(item(f"ov{who}", f"overall_{order[0]}", "replies", "rating", {"rating": 6}))
        result.append(item(f"ov{who}z", f"overall_{order[-1]}", "replies", "rating", {"rating": 2}))
        result.append(item(f"fl{who}", f"flags_{order[-1]}", "replies", "choices", {"choices": ["hallucination"]}))
        result.append(item(f"ra{who}", "rationale", "replies", "textarea", {"text": [f"Labeler {who} prefers {order[0]}."]}))
        return result
    if kind == "demonstration":
        return [item(f"tx{who}", "reply", "prompt", "textarea", {"text": [f"Labeler {who}'s reply to: {data['prompt'][-1]['content']}"]})]
    if kind == "rewrite":
        return [item(f"tx{who}", "rewrite", "original", "textarea", {"text": [f"A corrected reply by labeler {who}."]}),
                item(f"fl{who}", "flags", "original", "choices", {"choices": ["hallucination", "fails_to_follow_instruction"][: who + 1]})]
    choice = ("A", "B", "Tie")[who % 3]
    return [item(f"pf{who}", "preference", "replies", "choices", {"choices": [choice]}),
            item(f"ra{who}", "rationale", "replies", "textarea", {"text": ["Closer to the facts."]})]


def annotate(server, project_id: int, kind: str) -> dict:
    """Labelers answer through the API: task 0 by annotators 0 and 1 (and skipped by 2), task 1 by
    annotator 2 (plus a draft the admin saved and never submitted), every other task by annotator 1.
    Returns the expected counts."""
    import requests

    sdk = _sdk(server)
    tasks = sorted(sdk.tasks.list(project=project_id), key=lambda t: t.id)
    a = server.annotators
    plan = [(tasks[0], 0, False), (tasks[0], 1, False), (tasks[0], 2, True), (tasks[1], 2, False)]
    plan += [(task, 1, False) for task in tasks[2:]]
    for task, who, skipped in plan:
        sdk.annotations.create(id=task.id, completed_by=a[who], was_cancelled=skipped, lead_time=10.0 + who,
                               result=[] if skipped else _result(kind, task.data, who))
    access = ls_server.access_token(server.url, server.token)
    draft = requests.post(f"{server.url}/api/tasks/{tasks[1].id}/drafts", timeout=60,
                          headers={"Authorization": f"Bearer {access}"},
                          json={"result": _result(kind, tasks[1].data, 0), "lead_time": 3.0})
    assert draft.status_code == 201, draft.text[:300]
    submitted = sum(not skipped for _, _, skipped in plan)
    return {"submitted": submitted, "skipped": 1, "drafts": 1, "tasks": len(tasks),
            "labelers": {str(a[who]) for _, who, skipped in plan if not skipped}}


def _keys(export: list) -> dict:
    """The export's shape: task, annotation and draft keys (what a server upgrade could change)."""
    shape = {"task": set(), "annotation": set(), "draft": set(), "completed_by": set()}
    for task in export:
        shape["task"] |= set(task)
        for annotation in task.get("annotations") or []:
            shape["annotation"] |= set(annotation)
            shape["completed_by"].add(type(annotation.get("completed_by")).__name__)
        for draft in task.get("drafts") or []:
            shape["draft"] |= set(draft) if isinstance(draft, dict) else {"<id>"}
    return {k: sorted(v) for k, v in shape.items()}


def _check_fixture(kind: str, export_path: Path, tasks_dir: Path) -> None:
    fixture = REAL / f"label_studio_{kind}_export.json"
    if os.environ.get("CHATSMITH_CAPTURE_LS_FIXTURES") == "1":
        REAL.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export_path, fixture)
        shutil.copyfile(tasks_dir / "tasks.jsonl", REAL / f"label_studio_{kind}_tasks.jsonl")
        return
    assert fixture.is_file(), f"{fixture} missing: capture it (CHATSMITH_CAPTURE_LS_FIXTURES=1 make test-label-studio)"
    live, kept = _keys(json.loads(export_path.read_text())), _keys(json.loads(fixture.read_text()))
    assert live == kept, f"the server's export no longer has the captured shape of {fixture.name}: recapture it"


# ------------------------------------------------------------------------------------------ the round trips


@pytest.mark.parametrize("kind", ("comparison", "demonstration", "rewrite"))
def test_push_annotate_pull(server, token_env, kind, tmp_path, capsys):
    tasks_dir = make_tasks(kind, tmp_path / "tasks")
    count = len((tasks_dir / "tasks.jsonl").read_text().splitlines())

    code, out, err = _cli(capsys, "push", str(tasks_dir), "--label-studio", server.url)
    assert code == 0, err
    record = json.loads((tasks_dir / "label_studio_project.json").read_text())
    pid = record["project_id"]
    assert record["kind"] == kind and record["created"] and record["imported"] == count
    assert f"project {pid}" in out and f"{server.url}/projects/{pid}" in out
    # pushing again reuses the project (by title) and imports nothing twice
    code, out, err = _cli(capsys, "push", str(tasks_dir), "--label-studio", server.url)
    assert code == 0, err
    assert f"project {pid}" in out and "reused" in out and f"imported 0 of {count} tasks ({count} already there)" in out
    assert len(list(_sdk(server).tasks.list(project=pid))) == count

    expected = annotate(server, pid, kind)
    out_dir = tmp_path / "pulled"
    code, out, err = _cli(capsys, "pull", "--label-studio", server.url, "--project", str(pid), "--out", str(out_dir),
                          "--tasks", str(tasks_dir / "tasks.jsonl"))
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["read"] == summary["accepted"] + summary["rejected"]
    assert summary["read"] == expected["submitted"] + expected["skipped"] + expected["drafts"]
    assert summary["accepted"] == expected["submitted"]
    assert summary["reasons"] == {"status_cancelled": 1, "status_draft": 1}
    assert summary["kinds"] == {kind: expected["submitted"]}
    accepted = [json.loads(line) for line in (out_dir / "accepted.jsonl").read_text().splitlines()]
    assert {r["labeler"]["id"] for r in accepted} == expected["labelers"]  # per-annotator ids kept
    assert all(r["time_spent_s"] >= 10.0 for r in accepted)  # the draft (lead time 3 s) is not a judgment
    assert {r["task_id"] for r in accepted} <= {json.loads(line)["task_id"] for line in (tasks_dir / "tasks.jsonl").read_text().splitlines()}
    rejected = [json.loads(line) for line in (out_dir / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == ["status_cancelled", "status_draft"]
    if kind == "comparison":
        first = next(r for r in accepted if r["labeler"]["id"] == str(server.annotators[0]))
        assert len(first["ranking"]) == 2 and len(first["ranking"][1]) == 2  # a tie kept as a tie
        assert first["rationale"] and first["ratings"] and first["flags"]
    if kind == "rewrite":
        assert all(r["original"] and r["reply"].startswith("A corrected reply") for r in accepted)

    # pulling again adds nothing twice
    before = (out_dir / "accepted.jsonl").read_text()
    code, out, err = _cli(capsys, "pull", "--label-studio", server.url, "--project", str(pid), "--out", str(out_dir),
                          "--tasks", str(tasks_dir / "tasks.jsonl"))
    assert code == 0, err
    again = json.loads((out_dir / "summary.json").read_text())
    assert (again["read"], again["accepted"], again["rejected"]) == (summary["read"], summary["accepted"], summary["rejected"])
    assert (out_dir / "accepted.jsonl").read_text() == before
    _check_fixture(kind, out_dir / "label_studio_export.json", tasks_dir)


def test_arena_battles_round_trip(server, token_env, tmp_path):
    from labeling import label_studio_api as ls

    run = tmp_path / "run"
    tasks_dir = make_tasks("arena", run)
    pushed = ls.push_arena(run, server.url)
    assert pushed["kind"] == "arena" and pushed["imported"] == pushed["tasks"] == 4
    assert ls.push_arena(run, server.url)["imported"] == 0
    expected = annotate(server, pushed["project_id"], "arena")

    export = ls.pull_arena(run, server.url)  # the project id from the push's record
    assert export == run / "arena" / "human" / ls.EXPORT_NAME
    battles, summary = _arena_module().ingest_human(export, run)
    assert summary["read"] == summary["accepted"] + summary["rejected"] == expected["submitted"] + 2
    assert summary["reasons"] == {"status_cancelled": 1, "status_draft": 1}
    assert len(battles) == expected["submitted"]  # no automatic verdicts here: every answer differs
    assert {b.winner for b in battles} <= {"a", "b", "tie"} and len({b.winner for b in battles}) >= 2
    assert {b.model_a for b in battles} | {b.model_b for b in battles} == {"sft", "ppo"}
    # the same verdicts again: nothing twice
    battles_again, again = _arena_module().ingest_human(ls.pull_arena(run, server.url, pushed["project_id"]), run)
    assert (again["accepted"], len(battles_again)) == (summary["accepted"], len(battles))
    _check_fixture("arena", export, tasks_dir)
    # the CLI's way: `chatsmith arena --ingest --label-studio URL --out RUN` pulls the same verdicts and rates them
    from pipeline.eval.arena import cli

    assert cli.main(["--ingest", "--label-studio", server.url, "--out", str(run), "--rounds", "50"]) == 0
    ratings = json.loads((run / "arena" / "ratings.json").read_text())
    assert set(ratings) == {"sft", "ppo"}
    assert json.loads((run / "arena" / "summary.json").read_text())["battles"] == len(battles)


def test_snapshot_export_names_the_annotators(server, token_env, tmp_path):
    """Also capture the snapshot export with completed_by expanded ({id, email, ...}): the other real
    shape of an annotation's author, which the export writer in labeling/tasks.py follows."""
    import requests

    tasks_dir = make_tasks("comparison", tmp_path / "tasks")
    from labeling import label_studio_api as ls

    pid = ls.push(tasks_dir, server.url, project="chatsmith snapshot")["project_id"]
    annotate(server, pid, "comparison")
    headers = {"Authorization": f"Bearer {ls_server.access_token(server.url, server.token)}"}
    made = requests.post(f"{server.url}/api/projects/{pid}/exports/", headers=headers, timeout=120, json={
        "title": "chatsmith", "task_filter_options": {"only_with_annotations": True},
        "annotation_filter_options": {"usual": True, "ground_truth": True, "skipped": True},
        "serialization_options": {"drafts": {"only_id": False}, "annotations__completed_by": {"only_id": False}}})
    assert made.status_code == 201 and made.json()["status"] == "completed", made.text[:300]
    got = requests.get(f"{server.url}/api/projects/{pid}/exports/{made.json()['id']}/download?exportType=JSON",
                       headers=headers, timeout=120)
    assert got.status_code == 200
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_bytes(got.content)
    authors = [a["completed_by"] for t in got.json() for a in t["annotations"]]
    assert all(isinstance(a, dict) and a["email"].endswith("@labelers.local") for a in authors)
    from labeling.ingest import ingest

    summary = ingest("label-studio", snapshot, tmp_path / "ingested")
    assert summary["reasons"] == {"status_cancelled": 1, "status_draft": 1}
    labelers = {json.loads(line)["labeler"]["id"] for line in (tmp_path / "ingested" / "accepted.jsonl").read_text().splitlines()}
    assert labelers == set(ANNOTATORS)  # the email's name (the demo's labelers use the same domain)
    _check_fixture("comparison_snapshot", snapshot, tasks_dir)


def test_more_replies_per_task_update_the_projects_config(server, token_env, tmp_path):
    from labeling import label_studio_api as ls
    from labeling.tasks import write_tasks

    def batch(out, k):
        write_tasks([{"prompt": _prompt(f"Question {i}?"), "candidates": [{"content": f"Reply {j} to {i}."} for j in range(k)]}
                     for i in range(2)], out)
        return out

    first = ls.push(batch(tmp_path / "k2", 2), server.url, project="chatsmith growing batch")
    second = ls.push(batch(tmp_path / "k3", 3), server.url, project="chatsmith growing batch")
    assert first["created"] and not second["created"] and first["project_id"] == second["project_id"]
    assert second["imported"] == 2  # other replies: other tasks
    config = _sdk(server).projects.get(id=second["project_id"]).label_config
    assert 'name="rank_3"' in config and ls.config_kind(config) == "comparison"


# ------------------------------------------------------------------------------------------ errors: one line each


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("chatsmith labels: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_one_line_errors(server, token_env, tmp_path, capsys, monkeypatch):
    tasks_dir = make_tasks("comparison", tmp_path / "tasks")
    out = str(tmp_path / "out")

    dead = f"http://127.0.0.1:{ls_server.free_port()}"
    _one_line_error(*_cli(capsys, "pull", "--label-studio", dead, "--project", "1", "--out", out)[::2], dead, "cannot reach")
    _one_line_error(*_cli(capsys, "push", str(tasks_dir), "--label-studio", dead)[::2], dead, "cannot reach")

    _one_line_error(*_cli(capsys, "pull", "--label-studio", server.url, "--project", "99999", "--out", out)[::2],
                    server.url, "project 99999", "no such project")

    foreign = _sdk(server).projects.create(title="sentiment (not chatsmith)", label_config=(
        '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
        '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>'))
    _one_line_error(*_cli(capsys, "pull", "--label-studio", server.url, "--project", str(foreign.id), "--out", out)[::2],
                    server.url, f"project {foreign.id}", "not have a chatsmith labeling config")
    _one_line_error(*_cli(capsys, "push", str(tasks_dir), "--label-studio", server.url, "--project", "sentiment (not chatsmith)")[::2],
                    server.url, f"project {foreign.id}", "not have a chatsmith labeling config")

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.LEGACY_TOKEN)
    _one_line_error(*_cli(capsys, "pull", "--label-studio", server.url, "--project", "1", "--out", out)[::2],
                    server.url, "legacy", "legacy token authentication has been disabled", "personal access token",
                    "Account & Settings")

    header, claims, _signature = server.token.split(".")
    forged = f"{header}.{claims}.{base64.urlsafe_b64encode(b'not the signature').decode().rstrip('=')}"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", forged)
    _one_line_error(*_cli(capsys, "push", str(tasks_dir), "--label-studio", server.url)[::2],
                    server.url, "refused the personal access token")

    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    _one_line_error(*_cli(capsys, "pull", "--label-studio", server.url, "--project", "1", "--out", out)[::2],
                    server.url, "LABEL_STUDIO_API_KEY")
