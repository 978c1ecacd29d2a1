"""A pretrain-only run on a directory of corpus files, as a user runs it: memory and time at two sizes.

Generates (or reuses) `bench_data.py`'s corpus of many `.jsonl.gz` and `.parquet` files at each size,
writes a pretrain-only recipe whose `data.pretrain_text` is that directory, and runs, each under
`/usr/bin/time -v` (peak RSS of the largest process of the tree, which is what it reports):

  tokenize   `chatsmith data tokenize RECIPE`: trains the tokenizer on a streamed sample, then
             tokenizes the corpus into cached token shards with `data.tokenize_workers` processes
  pretrain   `chatsmith run RECIPE`: the shards are reused; 20 steps of a small model (streamed,
             memory-mapped windows)

and prints seconds and peak RSS of each, per size, and the ratio of the largest size to the smallest
(aim: <= 1.25x: memory is flat in corpus size).

    .venv/bin/python tests/bench/bench_pretrain_corpus.py [--gb 0.1 1] [--workers 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import ONE_THREAD, make_corpus  # noqa: E402

RECIPE = """name: bench-pretrain-{tag}
seed: 0
data:
  source: files
  pretrain_text: {corpus}
  tokenize_workers: {workers}
  cache_dir: {cache}
tokenizer:
  train: true
  vocab_size: 1024
  train_sample_bytes: 20000000
stages:
  pretrain:
    model: {{architecture: llama, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 256}}
    seq_len: 256
    batch_size: 8
    max_steps: {steps}
    save_steps: 1000
    logging_steps: 5
    eval_batches: 4
  sft: null
  reward: null
  ppo: null
launch:
  config: single
"""


def timed(args: list[str], log: Path) -> dict:
    """Run the CLI under /usr/bin/time -v: seconds and peak RSS (GB)."""
    env = dict(os.environ, **ONE_THREAD, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"{' '.join(args)} exited {code}; see {log}\n{text[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss_kb / 1024 ** 2, 3)}


def measure(gb: float, args) -> dict:
    root = args.work_dir / f"corpus-{gb:g}gb"
    meta = make_corpus(root, int(gb * 1e9))
    run_root = args.work_dir / f"run-{gb:g}gb"
    shutil.rmtree(run_root, ignore_errors=True)
    run_root.mkdir(parents=True)
    recipe = run_root / "recipe.yaml"
    recipe.write_text(RECIPE.format(tag=f"{gb:g}gb", corpus=root / "corpus", workers=args.workers, steps=args.steps,
                                    cache=run_root / "cache"))
    out = run_root / "run"
    tokenize = timed(["data", "tokenize", str(recipe), "--out", str(out)], run_root / "tokenize.log")
    pretrain = timed(["run", str(recipe), "--out", str(out)], run_root / "pretrain.log")
    steps = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return {"gb": gb, "text_bytes": meta.get("text_bytes"), "files": meta.get("files"), "tokenize": tokenize,
            "pretrain": pretrain, "last_step": steps[-1]["step"] if steps else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "chatsmith-bench-data")
    args = parser.parse_args()
    results = [measure(gb, args) for gb in args.gb]
    print(f"{'GB':>5} {'files':>6} {'tokenize s':>11} {'tokenize RSS GB':>16} {'pretrain s':>11} {'pretrain RSS GB':>16} {'steps':>6}")
    for r in results:
        print(f"{r['gb']:>5g} {r['files'] or '':>6} {r['tokenize']['seconds']:>11} {r['tokenize']['peak_rss_gb']:>16} "
              f"{r['pretrain']['seconds']:>11} {r['pretrain']['peak_rss_gb']:>16} {r['last_step']:>6}")
    if len(results) > 1:
        small, large = results[0], results[-1]
        for phase in ("tokenize", "pretrain"):
            ratio = large[phase]["peak_rss_gb"] / small[phase]["peak_rss_gb"]
            print(f"peak RSS {phase}: {large['gb']:g} GB / {small['gb']:g} GB = {ratio:.2f}x (aim <= 1.25x)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
