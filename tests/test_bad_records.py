"""Bad records in the recipe's own files (`data.sft`, `data.comparisons`, `data.prompts`) get what a labeler export's
bad records get: each is set aside with the user's file, line and reason and counted; more than
`data.max_bad_fraction` stops the run before any stage (preflight, one line naming the key and the file); no shape
error ends in a traceback."""

from __future__ import annotations

import json

import pytest

from tiny import DEMO, chatsmith

GOOD_PAIR = {"prompt": "What is the river of Alder?", "chosen": "The Sorrel.", "rejected": "The Tallow."}
GOOD_CONVERSATION = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_PAIRS = {  # line -> (the record, what the reason must say)
    3: ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' is a number"),
    5: ({"prompt": "q", "chosen": "a"}, "no 'rejected' field"),
    7: ([1, 2, 3], "a list, not a JSON object"),
    9: ({"prompt": [{"role": "wizard", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role is 'wizard'"),
    11: ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' is a string"),
}
BAD_CONVERSATIONS = {
    2: ({"messages": [{"role": "user", "content": "hi"}]}, "does not end with an assistant turn"),
    4: ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content is null"),
}
BAD_PROMPTS = {
    2: ({"prompt": 42}, "'prompt' is a number"),
    3: ({"text": "no prompt here"}, "no 'prompt' or 'messages' field"),
    4: ({"prompt": "ok", "split": "validation"}, "'split' is 'validation'"),
}


def _write(path, good, bad: dict, lines: int):
    """`lines` records: the bad ones at their lines, else `good` made distinct by its line (build keeps duplicates once)."""
    def distinct(line):
        return json.loads(json.dumps(good).replace("?", f" (line {line})?").replace("hi", f"hi {line}"))

    path.write_text("".join(json.dumps(bad[line][0] if line in bad else distinct(line)) + "\n" for line in range(1, lines + 1)))
    return path


@pytest.fixture()
def files(tmp_path):
    return {
        "cmp": _write(tmp_path / "pairs.jsonl", GOOD_PAIR, BAD_PAIRS, 20),
        "sft": _write(tmp_path / "sft.jsonl", GOOD_CONVERSATION, BAD_CONVERSATIONS, 10),
        "prompts": _write(tmp_path / "prompts.jsonl", {"prompt": "What is the dish of Brim?"}, BAD_PROMPTS, 10),
    }


def _recipe(files, *extra):
    return [DEMO, "data.source=files", "stages.pretrain=null", "stages.sft.init_from=/nowhere", "tokenizer.train=false",
            f"data.comparisons={files['cmp']}", f"data.sft={files['sft']}", f"data.prompts={files['prompts']}", *extra]


def test_too_many_bad_records_stop_the_run_before_any_work(files, tmp_path):
    out = tmp_path / "run"
    result = chatsmith("check", *_recipe(files), "--out", out, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    expected = {"data.comparisons": (files["cmp"], "5 of 20 records unusable", " line 3: 'chosen' is a number"),
                "data.sft": (files["sft"], "2 of 10 records unusable", " line 2: 'messages' does not end with an assistant turn"),
                "data.prompts": (files["prompts"], "3 of 10 records unusable", " line 2: 'prompt' is a number")}
    for key, (path, count, first) in expected.items():
        line = next(l for l in lines if l.startswith(f"chatsmith: error: {key}: {path}:"))
        assert count in line and f"{path}{first}" in line, line
    run = chatsmith("run", *_recipe(files), "--out", out, check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr and not out.exists()


def test_bad_records_below_the_limit_are_set_aside_with_file_line_and_reason(files, tmp_path):
    from pipeline.data import materialise_data
    from pipeline.recipe import load_recipe
    from pipeline.runner import Run

    recipe = load_recipe(DEMO, _recipe(files, "data.max_bad_fraction=0.5")[1:])
    run = Run(recipe, tmp_path / "run", say=lambda _: None)
    materialise_data(run)
    sources = run.dir / "labels" / "sources"
    for name, path, bad, lines in (("comparisons-0", files["cmp"], BAD_PAIRS, 20), ("sft-0", files["sft"], BAD_CONVERSATIONS, 10)):
        rejected = [json.loads(l) for l in (sources / f"{name}.rejected.jsonl").read_text().splitlines()]
        assert [r["where"] for r in rejected] == [f"{path} line {line}" for line in bad]
        for record, (_, reason) in zip(rejected, bad.values()):
            assert reason in record["reason"], record
        accepted = (sources / f"{name}.jsonl").read_text().splitlines()
        assert len(accepted) + len(rejected) == lines
    prompts = run.data_path("prompts.jsonl").read_text().splitlines()
    rejected = [json.loads(l) for l in run.data_path("prompts.rejected.jsonl").read_text().splitlines()]
    assert (len(prompts), [r["where"] for r in rejected]) == (7, [f"{files['prompts']} line {line}" for line in BAD_PROMPTS])
    built = json.loads((run.dir / "labels" / "build" / "build.json").read_text())
    assert built["comparisons_train"] + built["comparisons_eval"] == 20 - len(BAD_PAIRS)
    assert built["sft_train"] + built["sft_eval"] == 10 - len(BAD_CONVERSATIONS)
