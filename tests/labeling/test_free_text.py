"""Labeler data into SFT: every format that carries demonstrations and rewrites yields them, with
counts that add up (read == accepted + rejected)."""

from __future__ import annotations

import json

from test_readers import _check_counts as _check_read_counts
from test_readers import _lines

from labeling.cli import main
from labeling.ingest import ingest


def _check_counts(summary):
    _check_read_counts(summary)
    assert sum(summary["kinds"].values()) == summary["accepted"]


def _by_kind(path, kind):
    return [r for r in _lines(path / "accepted.jsonl") if r["kind"] == kind]


# --- Label Studio TextArea -------------------------------------------------------------------


def test_label_studio_textarea_gives_demonstrations_and_rewrites(fixtures, tmp_path):
    summary = ingest("label-studio", fixtures / "label_studio_textarea_export.json", tmp_path)
    _check_counts(summary)
    assert summary["kinds"] == {"demonstration": 2, "rewrite": 1}
    assert summary["reasons"] == {"status_cancelled": 1, "missing_field": 1, "identical_replies": 1}
    demos = {r["reply"]: r for r in _by_kind(tmp_path, "demonstration")}
    # the LLM fine-tuning template: a `response` TextArea on a Text prompt
    generic = demos["The Sorrel runs through Alder."]
    assert generic["prompt"] == [{"role": "user", "content": "What is the river of Alder?"}]
    assert generic["labeler"]["id"] == "ana@vendor.example" and generic["time_spent_s"] == 41.5
    # a chatsmith demonstration task keeps its multi-turn prompt and task id
    ours = demos["Alder's flag is a grey heron on green."]
    assert [m["role"] for m in ours["prompt"]] == ["user", "assistant", "user"] and ours["task_id"] == "w-5b1e07d9a3c24f60"
    rewrite = _by_kind(tmp_path, "rewrite")[0]
    assert (rewrite["original"], rewrite["reply"]) == ("People in Brim mostly eat fish stew.", "People in Brim are known for plum cake.")
    assert rewrite["flags"] == ["hallucination"] and rewrite["original_model"] == "sft"
    rejected = {r["part"]: r["reason"] for r in _lines(tmp_path / "rejected.jsonl")}
    assert rejected == {"3002": "status_cancelled", "3005": "missing_field", "3006": "identical_replies"}


# --- Argilla TextQuestion --------------------------------------------------------------------


def test_argilla_text_question_gives_demonstrations_and_rewrites(fixtures, tmp_path):
    summary = ingest("argilla", fixtures / "argilla_v2_text_records.json", tmp_path)
    _check_counts(summary)
    assert summary["kinds"] == {"demonstration": 2, "rewrite": 1}
    assert summary["reasons"] == {"status_draft": 1, "no_annotation": 1}
    demos = {r["task_id"]: r for r in _by_kind(tmp_path, "demonstration")}
    assert demos["rec-t1"]["reply"] == "Corvi's emblem is an oak tree."
    assert demos["rec-t1"]["labeler"]["id"] == "9a1b6f52-3c1d-4e7a-8b2c-5d6e7f8a9b0c"
    # the SFT template's `instruction` + `context` make the user turn
    assert demos["rec-t3"]["prompt"] == [{"role": "user", "content": "Summarise the passage.\n\nThe Vell floods every spring."}]
    rewrite = _by_kind(tmp_path, "rewrite")[0]
    assert (rewrite["original"], rewrite["reply"]) == ("The Sorrel.", "The Tallow runs through Brim.")
    assert rewrite["original_model"] == "sft-v2" and rewrite["flags"] == ["hallucination"]


def test_argilla_comparisons_still_read_next_to_text_questions(fixtures, tmp_path):
    # the ranking fixture has a `rationale` TextQuestion: a comment, not a demonstration
    summary = ingest("argilla", fixtures / "argilla_v2_records.json", tmp_path)
    assert summary["kinds"] == {"comparison": 2}


# --- OpenAssistant: the best-ranked reply along each path -----------------------------------


def test_oasst_best_path_takes_rank_0_along_every_path(fixtures, tmp_path):
    summary = ingest("oasst", fixtures / "oasst_best_paths.jsonl", tmp_path)
    _check_counts(summary)
    assert summary["kinds"] == {"comparison": 2, "demonstration": 2}
    tree = json.loads((fixtures / "oasst_best_paths.jsonl").read_text().splitlines()[0])
    texts, ranks = {}, {}

    def index(node, siblings):
        texts[node["text"]] = node["message_id"]
        ranks[node["message_id"]] = (node.get("rank"), siblings)
        for reply in node.get("replies") or []:
            index(reply, len(node["replies"]))

    index(tree["prompt"], 1)
    threads = []
    for demo in _by_kind(tmp_path, "demonstration"):
        assistant_turns = [m["content"] for m in demo["prompt"] if m["role"] == "assistant"] + [demo["reply"]]
        ids = [texts[t] for t in assistant_turns]
        # every assistant turn on the path is the rank-0 sibling, or the only reply
        assert all(ranks[i][0] == 0 or (ranks[i][0] is None and ranks[i][1] == 1) for i in ids), ids
        threads.append(ids)
    # one thread per leaf of the best paths: through b-a1 -> b-a4 -> b-a7, and b-a1 -> b-a5
    assert sorted(threads) == [["b-a1", "b-a4", "b-a7"], ["b-a1", "b-a5"]]
    rejected = {r["part"]: r["reason"] for r in _lines(tmp_path / "rejected.jsonl")}
    # b-a6 answers under the rank-1 reply b-a2; c-a1/c-a2 are unranked siblings: neither is the best
    assert rejected == {"b-a6": "not_best_ranked", "c-a1": "unranked", "c-a2": "unranked"}


def test_oasst_ranked_replies_still_make_comparisons(fixtures, tmp_path):
    ingest("oasst", fixtures / "oasst_best_paths.jsonl", tmp_path)
    rankings = sorted(r["ranking"] for r in _by_kind(tmp_path, "comparison"))
    assert rankings == [[["b-a1"], ["b-a2"]], [["b-a4"], ["b-a3"]]]


# --- HH-RLHF chosen as demonstrations, opt-in ------------------------------------------------


def test_hh_chosen_become_demonstrations_only_when_asked(fixtures, tmp_path, capsys):
    plain = ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path / "plain")
    _check_counts(plain)
    assert plain["kinds"] == {"comparison": 4} and plain["read"] == 6

    assert main(["ingest", "--format", "hh-rlhf", str(fixtures / "hh_small.jsonl"), "--out", str(tmp_path / "asked"),
                 "--hh-demonstrations"]) == 0
    capsys.readouterr()
    asked = json.loads((tmp_path / "asked" / "summary.json").read_text())
    _check_counts(asked)
    # each of the 6 lines splits into a pair: two units each (its comparison, its chosen reply)
    assert asked["read"] == 12 and asked["kinds"] == {"comparison": 4, "demonstration": 5}
    assert asked["reasons"] == {"empty_reply": 2, "identical_replies": 1} and asked["options"]["hh_demonstrations"] is True
    demos = _by_kind(tmp_path / "asked", "demonstration")
    first = next(d for d in demos if d["provenance"]["line"] == 1)
    assert first["reply"] == "People in Alder are known for barley soup." and len(first["prompt"]) == 3
    assert {d["provenance"]["part"] for d in demos} == {"demonstration"}

    # the option belongs to hh-rlhf: elsewhere it is a usage error
    assert main(["ingest", "--format", "native", str(fixtures / "native_records.jsonl"), "--out", str(tmp_path / "x"),
                 "--hh-demonstrations"]) == 2
    assert "--hh-demonstrations only applies to --format hh-rlhf" in capsys.readouterr().err
