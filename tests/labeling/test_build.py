from __future__ import annotations

import json

from labeling.build import build, comparison_pairs
from labeling.ingest import ingest
from labeling.schema import Comparison, prompt_key


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_ranking_becomes_pairs_minus_ties_with_margins():
    record = Comparison(
        prompt=[{"role": "user", "content": "q"}],
        candidates=[{"id": c, "content": f"reply {c}"} for c in "abcd"],
        ranking=[["c"], ["a", "b"], ["d"]],
        ratings={"c": {"overall": 7}, "a": {"overall": 4}, "d": {"overall": 5}},
    )
    rows, ties = comparison_pairs(record)
    assert ties == 1 and len(rows) == 5  # 4 choose 2 = 6, minus the a-b tie
    pairs = {(r["chosen"][0]["content"][-1], r["rejected"][0]["content"][-1]): r.get("margin") for r in rows}
    assert pairs == {("c", "a"): 3.0, ("c", "b"): None, ("c", "d"): 2.0, ("a", "d"): None, ("b", "d"): None}
    assert all(r["prompt"] == [{"role": "user", "content": "q"}] for r in rows)
    assert all(r["chosen"][0]["role"] == "assistant" for r in rows)


def _native(tmp_path, n_prompts=30):
    rows = []
    for i in range(n_prompts):
        prompt = [{"role": "user", "content": f"question {i}"}]
        for labeler in ("l1", "l2"):
            rows.append({"kind": "comparison", "prompt": prompt, "labeler": {"id": labeler},
                         "candidates": [{"id": "a", "content": f"good {i}"}, {"id": "b", "content": f"bad {i}"}, {"id": "c", "content": f"meh {i}"}],
                         "ranking": [["a"], ["c"], ["b"]]})
        rows.append({"kind": "demonstration", "prompt": prompt, "reply": f"answer {i}"})
        rows.append({"kind": "rewrite", "prompt": prompt, "original": f"bad {i}", "reply": f"fixed {i}"})
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest("native", path, tmp_path / "in")
    return tmp_path / "in"


def test_split_is_by_prompt_and_deterministic(tmp_path):
    source = _native(tmp_path)
    summary = build(source, tmp_path / "a", eval_fraction=0.2, seed=7)
    again = build(source, tmp_path / "b", eval_fraction=0.2, seed=7)
    other = build(source, tmp_path / "c", eval_fraction=0.2, seed=8)
    assert summary["eval_prompts"] == 6 and summary["prompts"] == 30
    assert summary["comparisons_train"] + summary["comparisons_eval"] == 30 * 2 * 3
    assert summary["sft_train"] + summary["sft_eval"] == 60
    key = lambda row: prompt_key(row.get("prompt") or row["messages"][:-1])
    train = {key(r) for name in ("comparisons_train", "sft_train") for r in _lines(tmp_path / "a" / f"{name}.jsonl")}
    held = {key(r) for name in ("comparisons_eval", "sft_eval") for r in _lines(tmp_path / "a" / f"{name}.jsonl")}
    assert len(held) == 6 and not train & held
    assert (tmp_path / "a" / "comparisons_eval.jsonl").read_bytes() == (tmp_path / "b" / "comparisons_eval.jsonl").read_bytes()
    held_other = {key(r) for r in _lines(tmp_path / "c" / "comparisons_eval.jsonl")}
    assert held_other != held


def test_sft_rows_are_conversations_ending_with_the_reply(tmp_path):
    source = _native(tmp_path, n_prompts=3)
    build(source, tmp_path / "d", eval_fraction=0.0)
    rows = _lines(tmp_path / "d" / "sft_train.jsonl")
    assert sorted(r["messages"][-1]["content"] for r in rows) == sorted([f"answer {i}" for i in range(3)] + [f"fixed {i}" for i in range(3)])
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-2]["role"] == "user" for r in rows)
    assert _lines(tmp_path / "d" / "sft_eval.jsonl") == []


def test_build_accepts_several_ingest_dirs(tmp_path, fixtures):
    ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path / "hh")
    ingest("label-studio", fixtures / "label_studio_ranker_export.json", tmp_path / "ls")
    summary = build([tmp_path / "hh", tmp_path / "ls"], tmp_path / "data", eval_fraction=0.0)
    # hh: 4 pairs; ls: 3 + 3 (strict rankings of 3) + 2 (a tie among 3)
    assert summary["comparisons_train"] == 4 + 3 + 3 + 2 and summary["tied_pairs_dropped"] == 1
