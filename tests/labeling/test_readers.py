"""Each format's reader on real exports (tests/fixtures/real/, copied verbatim, sources in its README) and on
fixtures written from each format's documentation for the edge cases the real samples lack."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from labeling.ingest import NothingAccepted, ingest
from labeling.readers import split_hh_pair

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


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


def test_hh_real_rows_from_harmless_base(tmp_path):
    """Seven rows of anthropics/hh-rlhf harmless-base/test.jsonl.gz as they are: single- and multi-turn, replies
    with the double spaces the transcripts have, two that differ in one final character, one empty chosen reply."""
    source = REAL / "hh_rlhf_harmless_base_test.jsonl"
    raw = _lines(source)
    summary = ingest("hh-rlhf", source, tmp_path)
    _check_counts(summary)
    # line 4's chosen transcript ends "Assistant: " with nothing after it
    assert raw[3]["chosen"].endswith("\n\nAssistant: ")
    assert (summary["read"], summary["accepted"], summary["reasons"]) == (7, 6, {"empty_reply": 1})
    assert [r["line"] for r in _lines(tmp_path / "rejected.jsonl")] == [4]
    records = {r["provenance"]["line"]: r for r in _lines(tmp_path / "accepted.jsonl")}
    assert sorted(records) == [1, 2, 3, 5, 6, 7]
    five_years = records[1]  # three human turns; the two transcripts part at the last assistant reply
    assert [m["role"] for m in five_years["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in five_years["prompt"]] == [
        "Where do you see yourself in five years?", "Why do you ask?", "i see you in the dump", "Oh.  What’s a dump?", "trash"]
    assert [c["content"] for c in five_years["candidates"]] == [
        "Oh.  Okay.  Thanks.", "I’m not sure what that is.  How about I tell you what I imagine my future to be."]
    assert five_years["ranking"] == [["chosen"], ["rejected"]]
    welcome = records[2]  # replies that differ only in their last character are two replies, not a duplicate
    assert [c["content"] for c in welcome["candidates"]] == ["You're welcome!", "You're welcome."]
    hello = records[3]
    assert hello["prompt"] == [{"role": "user", "content": "Hello, How are you?"}]
    for line, record in records.items():  # each record's text comes from its own line of the file
        row = raw[line - 1]
        assert row["chosen"].endswith(record["candidates"][0]["content"])
        assert row["rejected"].endswith(record["candidates"][1]["content"])


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


def test_hh_gzip_input(tmp_path):
    """The HH release ships gzip files (harmless-base/test.jsonl.gz): the same rows packed read the same."""
    packed = tmp_path / "hh.jsonl.gz"
    with open(REAL / "hh_rlhf_harmless_base_test.jsonl", "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = ingest("hh-rlhf", REAL / "hh_rlhf_harmless_base_test.jsonl", tmp_path / "plain")
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


def _messages(tree: dict) -> list[dict]:
    """Every message of an OpenAssistant tree, depth first."""
    found, stack = [], [tree["prompt"]]
    while stack:
        message = stack.pop()
        found.append(message)
        stack.extend(reversed(message.get("replies") or []))
    return found


def test_oasst_real_trees_from_en_100_tree(tmp_path):
    """Three trees of LAION-AI/Open-Assistant's en_100_tree.jsonl as they are. That export has no user ids, no
    labels and, on unranked messages, no `rank` key at all (the stand-in above has `rank: null`)."""
    source = REAL / "oasst_en_100_tree.jsonl"
    synthetic_tree, ranked_tree, partly_ranked_tree = _lines(source)
    assert synthetic_tree["prompt"]["synthetic"] is True and synthetic_tree["prompt"]["model_name"] == "chip20b"
    summary = ingest("oasst", source, tmp_path)
    _check_counts(summary)
    records = _lines(tmp_path / "accepted.jsonl")
    rejected = _lines(tmp_path / "rejected.jsonl")

    # tree 1: the prompt itself was written by a model, so nothing of the tree is used
    assert [r for r in records if r["provenance"]["line"] == 1] == []
    assert [(r["reason"], r["part"]) for r in rejected if r["line"] == 1] == [("synthetic", synthetic_tree["prompt"]["message_id"])]

    # tree 2: three replies ranked 0, 1, 2 -> one comparison in that order, and the best one as a demonstration
    replies = ranked_tree["prompt"]["replies"]
    by_rank = [m["message_id"] for m in sorted(replies, key=lambda m: m["rank"])]
    assert sorted(m["rank"] for m in replies) == [0, 1, 2]
    line2 = {r["kind"]: r for r in records if r["provenance"]["line"] == 2}
    assert line2["comparison"]["ranking"] == [[i] for i in by_rank]
    assert line2["comparison"]["prompt"] == [{"role": "user", "content": ranked_tree["prompt"]["text"]}]
    assert {c["id"]: c["content"] for c in line2["comparison"]["candidates"]} == {m["message_id"]: m["text"] for m in replies}
    best = next(m for m in replies if m["rank"] == 0)
    assert line2["demonstration"]["reply"] == best["text"]
    assert line2["comparison"]["labeler"] is None  # the export names nobody

    # tree 3: only one pair of siblings is ranked (a follow-up two turns down); every other set of siblings has no
    # rank, so no reply there is the best: no demonstration, those messages set aside as unranked
    messages = _messages(partly_ranked_tree)
    ranked = [m for m in messages if m.get("rank") is not None]
    assert sorted(m["rank"] for m in ranked) == [0, 1] and all("rank" not in m for m in messages if m not in ranked)
    line3 = [r for r in records if r["provenance"]["line"] == 3]
    assert [r["kind"] for r in line3] == ["comparison"]
    assert line3[0]["ranking"] == [[m["message_id"]] for m in sorted(ranked, key=lambda m: m["rank"])]
    parent = next(m for m in messages if any(r in ranked for r in m["replies"]))
    assert line3[0]["prompt"][-1] == {"role": "user", "content": parent["text"]} and len(line3[0]["prompt"]) == 3
    assert {r["reason"] for r in rejected if r["line"] == 3} == {"unranked", "not_best_ranked"}
    assert summary["kinds"] == {"comparison": 2, "demonstration": 1}


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


ANA, BO, CY = "0b8e2d4c-1f7a-4c55-9d3e-6a1f2b3c4d5e", "5f6e7d8c-9b0a-4c1d-8e2f-3a4b5c6d7e8f", "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d"


def test_argilla_sdk_flat_export(tmp_path):
    """`records.to_list(flatten=True)` as the argilla 2.8 SDK writes it (tests/fixtures/real/make_argilla_export.py):
    rec-1 ranked by ana and bo (submitted) and cy (draft), rec-2 by bo (submitted) and ana (discarded), rec-3 with
    no response, rec-4 a correction of its one response by ana."""
    summary = ingest("argilla", REAL / "argilla_v2_records_flat.json", tmp_path)
    _check_counts(summary)
    assert summary["reasons"] == {"status_draft": 1, "status_discarded": 1, "no_annotation": 1}
    assert summary["kinds"] == {"comparison": 3, "rewrite": 1}
    records = [(r["task_id"], r["labeler"]["id"], r) for r in _lines(tmp_path / "accepted.jsonl")]
    assert [(task, labeler) for task, labeler, _ in records] == [("rec-1", ANA), ("rec-1", BO), ("rec-2", BO), ("rec-4", ANA)]
    ana_1, bo_1, bo_2, ana_4 = (r for _, _, r in records)
    assert ana_1["ranking"] == [["response_2"], ["response_1"], ["response_3"]]
    assert bo_1["ranking"] == [["response_2"], ["response_3"], ["response_1"]]
    assert ana_1["ratings"] == {"response_2": {"overall": 6.0}} and ana_1["rationale"] == "Alder's emblem is a heron, not a lynx."
    assert {c["id"]: c["model"] for c in ana_1["candidates"]} == {"response_1": "sft-v1", "response_2": "sft-v2", "response_3": "sft-v1"}
    assert bo_2["ranking"] == [["response_2"], ["response_1"]]
    assert (ana_4["kind"], ana_4["reply"], ana_4["original"]) == ("rewrite", "People in Alder eat barley soup.", "Pizza, mostly.")


def test_argilla_sdk_nested_export_has_no_response_status(tmp_path):
    """The SDK's nested export (`records.to_json`, what `to_disk` writes) of the same records writes each response as
    {value, user_id}: cy's draft and ana's discard look submitted there. Nothing in it is taken as a judgment; each
    response is set aside as status_unknown with what to export instead."""
    raw = json.loads((REAL / "argilla_v2_records.json").read_text())
    assert all(set(answer) == {"value", "user_id"} for record in raw for answers in record["responses"].values() for answer in answers)
    with pytest.raises(NothingAccepted) as refused:
        ingest("argilla", REAL / "argilla_v2_records.json", tmp_path / "out")
    summary = refused.value.summary
    assert summary["accepted"] == 0 and "status_unknown 6" in str(refused.value)
    assert summary["reasons"] == {"status_unknown": 6, "no_annotation": 1}  # rec-1: 3 users, rec-2: 2, rec-4: 1
    details = {r["detail"] for r in _lines(tmp_path / "out" / "rejected.jsonl") if r["reason"] == "status_unknown"}
    assert len(details) == 1 and "to_list(flatten=True)" in details.pop()


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
