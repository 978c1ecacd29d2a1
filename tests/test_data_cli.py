"""`chatsmith data tokenize | ls | clean` and a pretraining corpus that is a directory of mixed files,
through the real CLI: one line for bad input, nothing copied into the run directory."""

import gzip
import json
import math

import pytest

from tiny import DEMO, TINY, chatsmith


def test_tokenize_ls_clean(tmp_path):
    cache = tmp_path / "cache"
    env_cache = [f"data.cache_dir={cache}"]
    first = chatsmith("data", "tokenize", DEMO, "--out", tmp_path / "run", *TINY, *env_cache)
    assert "parts tokenized" in first.stdout and (tmp_path / "run" / "data" / "corpus.json").exists()
    again = chatsmith("data", "tokenize", DEMO, "--out", tmp_path / "run", *TINY, *env_cache)
    assert "token shards from the cache (nothing tokenized)" in again.stdout
    listing = chatsmith("data", "ls", "--cache-dir", cache)
    assert "1 entries" in listing.stdout and "complete" in listing.stdout
    key = json.loads((tmp_path / "run" / "data" / "corpus.json").read_text())["keys"][0]
    assert "removed 1 entries" in chatsmith("data", "clean", key[:8], "--cache-dir", cache).stdout
    assert "0 entries" in chatsmith("data", "ls", "--cache-dir", cache).stdout


def _corpus(directory):
    directory.mkdir()
    rows = [{"text": f"The river of Alder {i} is the Sorrel. People in Brim eat plum cake number {i}."} for i in range(300)]
    with gzip.open(directory / "a.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows[:150])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [r["text"] for r in rows[150:]]}), directory / "b.parquet")


FILES = ["data.source=files", "stages.sft=null", "stages.reward=null", "stages.ppo=null", "tokenizer.vocab_size=300",
         "stages.pretrain.model={architecture: llama, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
         "stages.pretrain.seq_len=32", "stages.pretrain.batch_size=4", "stages.pretrain.max_steps=4",
         "stages.pretrain.save_steps=2", "stages.pretrain.logging_steps=2", "stages.pretrain.eval_fraction=0.1"]


@pytest.mark.slow
def test_pretrain_on_a_directory_of_mixed_files(tmp_path):
    _corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    chatsmith("run", DEMO, "--out", out, *FILES, f"data.pretrain_text={tmp_path / 'corpus'}", f"data.cache_dir={tmp_path / 'cache'}")
    evals = json.loads((out / "pretrain" / "eval.json").read_text())
    # trained on the directory's files: 4 steps x batch 4 x 32 tokens, all from the one source; evaluated
    assert sum(evals["tokens_by_source"].values()) == 4 * 4 * 32 and len(evals["tokens_by_source"]) == 1
    assert math.isfinite(evals["eval_loss"]) and evals["eval_loss"] > 0
    assert not any(p.suffix in (".gz", ".parquet") for p in out.rglob("*"))  # the corpus is not copied


def test_bad_corpus_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "fine"}\n' * 50)[:-20])  # cut short: a corrupt gzip
    result = chatsmith("run", DEMO, "--out", tmp_path / "run", *FILES, f"data.pretrain_text={bad}",
                       f"data.cache_dir={tmp_path / 'cache'}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr and result.stderr.strip().count("\n") == 0
