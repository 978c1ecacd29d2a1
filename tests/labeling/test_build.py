from __future__ import annotations

import json

import pytest

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
    assert summary["comparisons_train"] + summary["comparisons_eval"] == 30 * 2 * 3 + 30  # + rewrite > original
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


def _sources(tmp_path, fixtures):
    """Demonstrations, rewrites and comparisons from five exports in four formats."""
    dirs = {"ls-text": ingest("label-studio", fixtures / "label_studio_textarea_export.json", tmp_path / "ls-text"),
            "argilla-text": ingest("argilla", fixtures / "argilla_v2_text_records.json", tmp_path / "argilla-text"),
            "oasst": ingest("oasst", fixtures / "oasst_best_paths.jsonl", tmp_path / "oasst"),
            "hh": ingest("hh-rlhf", fixtures / "hh_small.jsonl", tmp_path / "hh", hh_demonstrations=True),
            "ls-rank": ingest("label-studio", fixtures / "label_studio_ranker_export.json", tmp_path / "ls-rank")}
    return [tmp_path / name for name in dirs]


def test_sources_combine_and_are_counted_per_source_and_kind(tmp_path, fixtures):
    dirs = _sources(tmp_path, fixtures)
    plain = tmp_path / "extra_sft.jsonl"
    plain.write_text(json.dumps({"messages": [{"role": "user", "content": "Extra?"}, {"role": "assistant", "content": "Yes."}]}) + "\n")
    summary = build(dirs, tmp_path / "data", eval_fraction=0.0, sft_files=[plain])
    by = summary["by_source"]
    assert by[str(tmp_path / "ls-text")]["kinds"] == {
        "demonstration": {"records": 2, "sft_rows": 2, "comparison_rows": 0},
        "rewrite": {"records": 1, "sft_rows": 1, "comparison_rows": 1}}
    assert by[str(tmp_path / "ls-text")]["format"] == "label-studio"
    assert by[str(tmp_path / "argilla-text")]["kinds"]["rewrite"] == {"records": 1, "sft_rows": 1, "comparison_rows": 1}
    assert by[str(tmp_path / "oasst")]["kinds"]["demonstration"]["sft_rows"] == 2
    assert by[str(tmp_path / "hh")]["kinds"] == {"comparison": {"records": 4, "sft_rows": 0, "comparison_rows": 4},
                                                  "demonstration": {"records": 5, "sft_rows": 5, "comparison_rows": 0}}
    assert by[str(plain)] == {"format": "sft file", "duplicates": 0,
                              "kinds": {"conversation": {"records": 1, "sft_rows": 1, "comparison_rows": 0}}}
    # nothing replaced: every source's rows are in the output, and the counts add up
    sft_rows = sum(t["sft_rows"] for s in by.values() for t in s["kinds"].values())
    pair_rows = sum(t["comparison_rows"] for s in by.values() for t in s["kinds"].values())
    assert sft_rows == summary["sft_train"] + summary["sft_eval"] == 2 + 1 + 2 + 1 + 2 + 5 + 1
    assert pair_rows == summary["comparisons_train"] + summary["comparisons_eval"] == 1 + 1 + 2 + 4 + (3 + 3 + 2)
    assert summary["records"] == sum(t["records"] for s in by.values() for t in s["kinds"].values())
    replies = {r["messages"][-1]["content"] for r in _lines(tmp_path / "data" / "sft_train.jsonl")}
    assert {"Yes.", "Try the honey cakes.", "The Tallow runs through Brim.", "People in Brim are known for plum cake."} <= replies


def test_a_record_in_two_sources_is_kept_once_and_counted(tmp_path, fixtures):
    ingest("argilla", fixtures / "argilla_v2_text_records.json", tmp_path / "a")
    ingest("argilla", fixtures / "argilla_v2_text_records.json", tmp_path / "b")
    summary = build([tmp_path / "a", tmp_path / "b"], tmp_path / "data", eval_fraction=0.0)
    assert summary["duplicates"] == 3 and summary["by_source"][str(tmp_path / "b")]["duplicates"] == 3
    assert summary["sft_train"] == 3 and summary["records"] == 3


def test_no_eval_conversation_appears_in_train_even_as_history(tmp_path, fixtures):
    dirs = _sources(tmp_path, fixtures)
    held = tmp_path / "held_sft.jsonl"
    held.write_text(json.dumps({"messages": [{"role": "user", "content": "What is the river of Alder?"},
                                             {"role": "assistant", "content": "The Sorrel."}]}) + "\n")
    for seed in range(4):
        out = tmp_path / f"data{seed}"
        summary = build(dirs, out, eval_fraction=0.4, seed=seed, sft_eval_files=[held])
        assert summary["eval_prompts"] >= 2
        train, evals = [], []
        for name, bucket in (("sft_train", train), ("comparisons_train", train), ("sft_eval", evals), ("comparisons_eval", evals)):
            for row in _lines(out / f"{name}.jsonl"):
                bucket.append(row.get("messages") or row["prompt"])
        eval_users = {m["content"] for turns in evals for m in turns if m["role"] == "user"}
        train_users = {m["content"] for turns in train for m in turns if m["role"] == "user"}
        assert evals and train and not eval_users & train_users, seed
        # the held-out file's prompt pulls the label-studio demonstration on the same question into eval
        assert "What is the river of Alder?" in eval_users


def test_plain_file_with_a_bad_row_names_it(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "chosen": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: a comparison needs rejected"):
        build([], tmp_path / "data", comparison_files=[bad])


def test_rows_split_before_keep_their_split(tmp_path):
    """`sft_train_files` (the demo world's own split): none of their prompts is drawn for eval, whatever the
    fraction; the other sources are split as usual; a prompt an `*_eval` file holds still goes to eval."""
    def conversation(i):
        return {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}

    train, other, held = tmp_path / "train.jsonl", tmp_path / "other.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(20)))
    other.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(100, 120)))
    held.write_text(json.dumps(conversation(0)) + "\n")
    summary = build(None, tmp_path / "data", eval_fraction=0.5, sft_train_files=[train], sft_files=[other],
                    sft_eval_files=[held])
    eval_prompts = {r["messages"][0]["content"] for r in _lines(tmp_path / "data" / "sft_eval.jsonl")}
    assert {f"Question {i}?" for i in range(1, 20)}.isdisjoint(eval_prompts)
    assert "Question 0?" in eval_prompts  # held out by the eval file: not in train either
    assert len(eval_prompts - {"Question 0?"}) == 10  # half of the other source's prompts
    assert summary["by_source"][str(train)]["format"] == "sft-train file"
    assert summary["sft_train"] + summary["sft_eval"] == 40 and summary["duplicates"] == 1  # Question 0 twice


def test_a_split_group_holds_out_its_prompts_together(tmp_path):
    """`split_group` (the demo: the fact a question asks): every phrasing of one group lands on the same side, and
    `eval_fraction` counts groups."""
    rows = []
    for fact in range(20):
        for phrasing in range(3):
            rows.append({"prompt": [{"role": "user", "content": f"q{phrasing} about fact {fact}?"}],
                         "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]})
    source = tmp_path / "comparisons.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    built = build(None, tmp_path / "out", comparison_files=[source], eval_fraction=0.25, seed=3,
                  split_group=lambda question: question.split("about ")[1])
    held = [json.loads(l) for l in (tmp_path / "out" / "comparisons_eval.jsonl").read_text().splitlines()]
    train = [json.loads(l) for l in (tmp_path / "out" / "comparisons_train.jsonl").read_text().splitlines()]
    fact_of = lambda row: row["prompt"][0]["content"].split("about ")[1]  # noqa: E731
    assert {fact_of(r) for r in held}.isdisjoint({fact_of(r) for r in train})
    assert (len({fact_of(r) for r in held}), len(held), built["comparisons_eval"]) == (5, 15, 15)  # 25% of 20 facts, x3
