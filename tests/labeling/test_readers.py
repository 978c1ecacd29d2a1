"""Each format's reader on a fixture written from that format's documentation."""

from __future__ import annotations

import gzip
import json
import shutil

from labeling.ingest import ingest
from labeling.readers import split_hh_pair


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _check_counts(summary):
    assert summary["read"] == summary["accepted"] + summary["rejected"]
    assert sum(summary["reasons"].values()) == summary["rejected"]


# --- HH-RLHF -------------------------------------------------------------------------------


def test_hh_multi_turn_prompt_is_the_shared_history(fixtures, tmp_path):
    summary = ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path)
    _check_counts(summary)
    assert summary["reasons"] == {"empty_reply": 1, "identical_replies": 1}
    first = _lines(tmp_path / "accepted.jsonl")[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user"]
    assert first["prompt"][1]["content"] == "The Sorrel runs through Alder."
    assert [c["content"] for c in first["candidates"]] == ["People in Alder are known for barley soup.", "Mostly pizza, I think."]
    assert first["ranking"] == [["chosen"], ["rejected"]]
    assert first["provenance"]["line"] == 1 and len(first["provenance"]["sha256"]) == 64


def test_hh_reply_containing_assistant_marker_stays_whole():
    chosen = "\n\nHuman: Show me.\n\nAssistant: Like this:\n\nAssistant: Hello! How can I help?\n\nThat is all."
    rejected = "\n\nHuman: Show me.\n\nAssistant: Like this:\n\nAssistant: Go away."
    prompt, good, bad = split_hh_pair(chosen, rejected)
    assert prompt == [{"role": "user", "content": "Show me."}]
    assert good == "Like this:\n\nAssistant: Hello! How can I help?\n\nThat is all."
    assert bad == "Like this:\n\nAssistant: Go away."


def test_hh_replies_differing_inside_a_quoted_turn_still_split_at_the_real_turn(fixtures, tmp_path):
    ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path)
    quoted = [r for r in _lines(tmp_path / "accepted.jsonl") if r["prompt"][0]["content"].startswith("Show me how")]
    assert len(quoted) == 1 and len(quoted[0]["prompt"]) == 1
    assert "\n\nAssistant: Hello!" in quoted[0]["candidates"][0]["content"]


def test_hh_gzip_input(fixtures, tmp_path):
    packed = tmp_path / "hh.jsonl.gz"
    with open(fixtures / "hh_small.jsonl", "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path / "plain")
    zipped = ingest("hh-rlhf", packed, tmp_path / "zipped")
    assert (zipped["read"], zipped["accepted"], zipped["reasons"]) == (plain["read"], plain["accepted"], plain["reasons"])


# --- OpenAssistant ---------------------------------------------------------------------------


def test_oasst_ranked_siblings_become_a_ranking_and_bad_messages_are_set_aside(fixtures, tmp_path):
    summary = ingest("oasst", fixtures / "oasst_trees.jsonl", tmp_path)
    _check_counts(summary)
    assert summary["reasons"] == {"deleted": 1, "synthetic": 1, "failed_review": 1, "not_exportable": 1}
    records = _lines(tmp_path / "accepted.jsonl")
    brim = next(r for r in records if r["kind"] == "comparison" and "Brim" in r["prompt"][0]["content"])
    assert brim["ranking"] == [["m-a1"], ["m-a2"], ["m-a3"]]  # rank 0 is best; deleted/synthetic/failed not candidates
    assert brim["flags"] == {"m-a2": ["fails_to_follow_instruction"], "m-a3": ["inappropriate_for_assistant"]}
    assert brim["ratings"]["m-a1"]["oa_quality"] == 0.92
    deep = next(r for r in records if r["kind"] == "demonstration")
    assert [m["role"] for m in deep["prompt"]] == ["user", "assistant", "user"]  # a follow-up down the tree
    rejected = _lines(tmp_path / "rejected.jsonl")
    assert {r["part"] for r in rejected if r["reason"] in ("deleted", "synthetic", "failed_review")} == {"m-a5", "m-a6", "m-a7"}


# --- Label Studio ----------------------------------------------------------------------------


def test_label_studio_ranker_buckets_ties_and_cancelled(fixtures, tmp_path):
    summary = ingest("label-studio", fixtures / "label_studio_ranker_export.json", tmp_path)
    _check_counts(summary)
    assert summary["reasons"] == {"status_cancelled": 1, "no_annotation": 1}
    records = _lines(tmp_path / "accepted.jsonl")
    assert [r["ranking"] for r in records] == [[["r1"], ["r3"], ["r2"]], [["r3"], ["r1"], ["r2"]], [["q"], ["p", "s"]]]
    assert records[0]["ratings"] == {"r1": {"overall": 6.0}, "r2": {"overall": 2.0}, "r3": {"overall": 5.0}}
    assert records[0]["time_spent_s"] == 31.2 and records[0]["labeler"]["id"] == "3"
    assert records[0]["task_id"] == "ls-101"
    cancelled = next(r for r in _lines(tmp_path / "rejected.jsonl") if r["reason"] == "status_cancelled")
    assert cancelled["part"] == "1003"


def test_label_studio_pairwise_left_right(fixtures, tmp_path):
    summary = ingest("label-studio", fixtures / "label_studio_pairwise_export.json", tmp_path)
    _check_counts(summary)
    records = _lines(tmp_path / "accepted.jsonl")
    by_labeler = {r["labeler"]["id"]: r for r in records if r["task_id"] == "ls-201"}
    assert by_labeler["ana@vendor.example"]["ranking"] == [["text1"], ["text2"]]
    assert by_labeler["bo@vendor.example"]["ranking"] == [["text2"], ["text1"]]
    assert summary["reasons"] == {"status_cancelled": 1}


# --- Argilla ---------------------------------------------------------------------------------


def test_argilla_only_submitted_responses_count_and_ties_are_kept(fixtures, tmp_path):
    summary = ingest("argilla", fixtures / "argilla_v2_records.json", tmp_path)
    _check_counts(summary)
    assert summary["reasons"] == {"status_draft": 1, "status_discarded": 1, "no_annotation": 1}
    records = {r["labeler"]["id"]: r for r in _lines(tmp_path / "accepted.jsonl")}
    assert set(records) == {"u-ana", "u-bo"}
    assert records["u-ana"]["ranking"] == [["response_2", "response_1"], ["response_3"]]
    assert records["u-ana"]["ratings"] == {"response_2": {"overall": 6.0}, "response_3": {"overall": 1.0}}
    assert records["u-ana"]["rationale"].startswith("Alder's emblem")
    assert {c["id"]: c["model"] for c in records["u-bo"]["candidates"]} == {"response_1": "sft-v1", "response_2": "sft-v2", "response_3": "sft-v1"}


def test_argilla_v1_and_flat_v2_shapes_as_jsonl(tmp_path):
    v1 = {"fields": {"prompt": "Q?", "response-a": "One.", "response-b": "Two."},
          "responses": [{"user_id": "u1", "status": "submitted", "values": {"rank": {"value": [{"value": "response-b", "rank": 1}, {"value": "response-a", "rank": 2}]}}},
                        {"user_id": "u2", "status": "draft", "values": {"rank": {"value": [{"value": "response-a", "rank": 1}, {"value": "response-b", "rank": 2}]}}}]}
    flat = {"id": "r9", "prompt": "Q2?", "response_1": "Yes.", "response_2": "No.",
            "ranking.responses": [["response_1", "response_2"]], "ranking.responses.users": ["u3"], "ranking.responses.status": ["submitted"]}
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(v1) + "\n" + json.dumps(flat) + "\n")
    summary = ingest("argilla", path, tmp_path / "out")
    _check_counts(summary)
    assert (summary["accepted"], summary["reasons"]) == (2, {"status_draft": 1})
    rankings = sorted(r["ranking"] for r in _lines(tmp_path / "out" / "accepted.jsonl"))
    assert rankings == [[["response-b"], ["response-a"]], [["response_1"], ["response_2"]]]


# --- native ----------------------------------------------------------------------------------


def test_native_demonstrations_rewrites_comparisons_round_trip(fixtures, tmp_path):
    summary = ingest("native", fixtures / "native_records.jsonl", tmp_path / "once")
    _check_counts(summary)
    assert summary["kinds"] == {"comparison": 1, "demonstration": 1, "rewrite": 1}
    assert summary["reasons"] == {"rank_mismatch": 1, "status_draft": 1}
    again = ingest("native", tmp_path / "once" / "accepted.jsonl", tmp_path / "twice")
    assert again["accepted"] == 3 and again["rejected"] == 0
    first = {r["id"]: r for r in _lines(tmp_path / "once" / "accepted.jsonl")}
    second = {r["id"]: r for r in _lines(tmp_path / "twice" / "accepted.jsonl")}
    assert first.keys() == second.keys()
    for rid, record in first.items():
        assert {k: v for k, v in record.items() if k != "provenance"} == {k: v for k, v in second[rid].items() if k != "provenance"}


def test_label_studio_choice_ties_and_unsorted_ranker(tmp_path):
    data = {"prompt": "Which?", "candidates": [{"id": "a", "body": "One."}, {"id": "b", "body": "Two."}]}
    choice = lambda value: {"type": "choices", "from_name": "preference", "to_name": "replies", "value": {"choices": [value]}}
    export = [{"id": 1, "data": data, "annotations": [
        {"id": 1, "completed_by": 1, "was_cancelled": False, "result": [choice("Tie")]},
        {"id": 2, "completed_by": 2, "was_cancelled": False, "result": [choice("B")]},
        {"id": 3, "completed_by": 3, "was_cancelled": False, "result": [
            {"type": "ranker", "from_name": "rank", "to_name": "replies", "value": {"ranker": {"_": ["a"], "rank_1": ["b"]}}}]},
        {"id": 4, "completed_by": 4, "was_cancelled": False, "result": [choice("maybe")]},
        {"id": 5, "completed_by": 5, "was_cancelled": False, "result": []},
    ]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    summary = ingest("label-studio", path, tmp_path / "out")
    _check_counts(summary)
    assert summary["reasons"] == {"rank_mismatch": 2, "unranked": 1}
    assert [r["ranking"] for r in _lines(tmp_path / "out" / "accepted.jsonl")] == [[["a", "b"]], [["b"], ["a"]]]
