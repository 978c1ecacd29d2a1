"""Preflight (`chatsmith check`, and the start of every `run` / `stage`): each bad recipe or file is refused
before any work with exit 2 and one line naming the recipe key and the path; nothing is written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tiny import DEMO, chatsmith

FILES = ["data.source=files", "tokenizer.train=false"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_assets):
    root = tmp_path_factory.mktemp("preflight")
    docs = _jsonl(root / "docs.jsonl", [{"text": f"document {i}"} for i in range(5)])
    sft = _jsonl(root / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3)
    comparisons = _jsonl(root / "cmp.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3)
    prompts = _jsonl(root / "prompts.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    corrupt = root / "corrupt.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b'{"text": "x"}\n' * 200)[:-30])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["no text column here"]}), root / "notext.parquet")
    _jsonl(root / "odd_sft.jsonl", [{"question": "hi", "answer": "hello"}] * 3)
    (root / "notjson.jsonl").write_text("this is not json\n" * 5)
    (root / "empty.json").write_text("")
    (root / "lfs.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n")
    (root / "binary.json").write_bytes(bytes(range(256)) * 4)
    hh = root / "hh.jsonl"  # real rows of anthropics/hh-rlhf (tests/fixtures/real/README.md)
    hh.write_bytes((Path(__file__).parent / "fixtures" / "real" / "hh_rlhf_harmless_base_test.jsonl").read_bytes())
    (root / "no_tokenizer").mkdir()
    (root / "no_tokenizer" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    two_labels = root / "two_labels"
    two_labels.mkdir()
    (two_labels / "config.json").write_text(json.dumps({"model_type": "llama", "id2label": {"0": "a", "1": "b"}}))
    (two_labels / "tokenizer.json").write_text("{}")
    blocker = root / "a_file"
    blocker.write_text("x")
    return {"root": root, "docs": docs, "sft": sft, "cmp": comparisons, "prompts": prompts, "hh": hh,
            "policy": tiny_assets["policy"], "reward": tiny_assets["reward"], "blocker": blocker}


def _base(f) -> list[str]:
    """A files recipe that passes: every stage has its data and checkpoints."""
    return [*FILES, f"tokenizer.from_checkpoint={f['policy']}", f"stages.pretrain.init_from={f['policy']}",
            f"data.pretrain_text={f['docs']}", f"data.sft={f['sft']}", f"data.comparisons={f['cmp']}", f"data.prompts={f['prompts']}"]


CASES = {
    # name: (overrides given the fixture, expected key, expected text in the line)
    "missing pretraining file": (lambda f: [f"data.pretrain_text={f['root']}/nope.jsonl"], "data.pretrain_text", "no such file"),
    "glob matching nothing": (lambda f: [f"data.pretrain_text={f['root']}/*.xyz"], "data.pretrain_text", "matches no file"),
    "corrupt gzip": (lambda f: [f"data.pretrain_text={f['root']}/corrupt.jsonl.gz"], "data.pretrain_text", "corrupt.jsonl.gz"),
    "parquet without the text field": (lambda f: [f"data.pretrain_text={f['root']}/notext.parquet"], "data.pretrain_text", "text"),
    "SFT rows of no known shape": (lambda f: [f"data.sft={f['root']}/odd_sft.jsonl"], "data.sft", "odd_sft.jsonl"),
    "comparisons that are not JSON": (lambda f: [f"data.comparisons={f['root']}/notjson.jsonl"], "data.comparisons", "notjson.jsonl"),
    "empty labeler export": (lambda f: [f"data.labels=[{{format: label-studio, path: {f['root']}/empty.json}}]"], "data.labels[0]", "empty"),
    "LFS pointer export": (lambda f: [f"data.labels=[{{format: label-studio, path: {f['root']}/lfs.json}}]"], "data.labels[0]", "Git LFS pointer"),
    "binary export": (lambda f: [f"data.labels=[{{format: argilla, path: {f['root']}/binary.json}}]"], "data.labels[0]", "binary"),
    "export in another format": (lambda f: [f"data.labels=[{{format: label-studio, path: {f['hh']}}}]"], "data.labels[0]", "looks like a hh-rlhf export; use format hh-rlhf"),
    "HH export as the only SFT data": (lambda f: ["data.sft=null", f"data.labels=[{{format: hh-rlhf, path: {f['hh']}}}]"], "data.sft", "hh_demonstrations"),
    "no comparisons for the reward stage": (lambda f: ["data.comparisons=null"], "data.comparisons", "no comparisons"),
    "no prompts for PPO": (lambda f: ["data.prompts=null"], "data.prompts", "no prompts"),
    "missing checkpoint": (lambda f: [f"stages.pretrain.init_from={f['root']}/gone"], "stages.pretrain.init_from", "no such checkpoint"),
    "checkpoint without a tokenizer": (lambda f: [f"stages.pretrain.init_from={f['root']}/no_tokenizer"], "stages.pretrain.init_from",
                                       "not a checkpoint: no tokenizer.json, tokenizer_config.json or tokenizer.model"),
    "missing held-out reward model start": (lambda f: ["stages.reward.holdout_fraction=0.5", f"stages.reward.holdout_init_from={f['root']}/gone"],
                                            "stages.reward.holdout_init_from", "no such checkpoint"),
    "reward model with two outputs": (lambda f: [f"stages.ppo.reward_model={f['root']}/two_labels"], "stages.ppo.reward_model", "num_labels=1"),
    "missing held-out prompts": (lambda f: [f"data.eval_prompts={f['root']}/gone.jsonl"], "data.eval_prompts", "no such file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_one_line_naming_the_key_and_path(case, files, capsys, tmp_path):
    from pipeline.cli import main

    overrides, key, text = CASES[case]
    out = tmp_path / "run"
    code = main(["check", str(DEMO), "--out", str(out), *_base(files), *overrides(files)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("chatsmith: error: ")]
    assert code == 2, err
    assert any(line.startswith(f"chatsmith: error: {key}") and text in line for line in lines), err
    assert "Traceback" not in err and not out.exists()


def test_a_good_recipe_passes_and_run_lists_every_problem_at_once(files, capsys, tmp_path):
    from pipeline.cli import main

    assert main(["check", str(DEMO), "--out", str(tmp_path / "ok"), *_base(files)]) == 0
    assert "no problems found" in capsys.readouterr().out
    out = tmp_path / "run"
    result = chatsmith("run", DEMO, "--out", out, *_base(files), f"data.sft={files['root']}/nope.jsonl", "data.prompts=null",
                       f"stages.ppo.reward_model={files['root']}/two_labels", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line.split(":")[2].strip() for line in result.stderr.splitlines()] == ["data.sft", "data.prompts", "stages.ppo.reward_model"]
    assert not out.exists()  # nothing was run or written


def test_an_unwritable_output_directory(files, capsys):
    from pipeline.cli import main

    assert main(["check", str(DEMO), "--out", str(files["blocker"] / "run"), *_base(files)]) == 2
    assert "chatsmith: error: --out: " in capsys.readouterr().err


# Llama-2-7B's shape: 6.74e9 parameters (its paper's 7B; the estimate leaves out the norms' 266k). Preflight asks
# for fp32 weights per running stage plus Adam's two moments and a copy while saving: 4 bytes x (4 stages + 4).
LLAMA2_7B = ["stages.pretrain.model={architecture: llama, hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32, "
             "intermediate_size: 11008, tie_word_embeddings: false}", "tokenizer.vocab_size=32000"]
LLAMA2_7B_RUN_BYTES = 6.738e9 * 4 * (4 + 4)  # ~215.6 GB


@pytest.mark.parametrize("free_gb, refused", [(100.0, True), (300.0, False)])
def test_disk_room_for_the_checkpoints(free_gb, refused, monkeypatch, capsys, tmp_path):
    """The filesystem of --out (its nearest existing directory) must hold the run's checkpoints and resume state."""
    import shutil
    from collections import namedtuple

    from pipeline.cli import main

    usage, asked = namedtuple("usage", "total used free"), []

    def disk_usage(path):
        asked.append(str(path))
        return usage(1e13, 1e13 - free_gb * 1e9, free_gb * 1e9)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    out = tmp_path / "not" / "yet" / "run"
    code = main(["check", str(DEMO), "--out", str(out), *LLAMA2_7B])
    err = capsys.readouterr().err
    assert str(tmp_path) in asked  # the nearest directory that exists: where the run's files will land
    room = [line for line in err.splitlines() if line.startswith("chatsmith: error: --out")]
    if refused:
        assert code == 2 and room == [f"chatsmith: error: --out: {out}: needs about {LLAMA2_7B_RUN_BYTES / 1e9:.1f} GB "
                                      f"for checkpoints and resume state, {free_gb:.1f} GB free"], err
    else:
        assert room == [] and code == 0, err
    assert not out.exists()
