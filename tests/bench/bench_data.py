"""Data-layer benchmark: tokenizing a corpus into shards, against a plain tokenizer loop and other libraries.

Generates a corpus of many files, half `.jsonl.gz` and half `.parquet` (0.1 GB of text; 1 GB with
`--gb 1`), trains a byte-level BPE (vocab 1024) on a sample of it, then runs each measured step in a
child process, one thread per process (`RAYON_NUM_THREADS=1`, `TOKENIZERS_PARALLELISM=false`):

  plain loop   one process: read the files, `tokenizer(batch_of_1000)`, keep nothing (the reference)
  chatsmith    `tokenize_sources` with 1 and with 2 worker processes, into a fresh cache dir

and prints text MB/s of each, the ratios (aims: 2 workers / 1 worker >= 1.7, 1 worker / plain loop
>= 1.0), and the peak memory of the process tree (sum of RSS over the child and its workers, sampled
every 0.1 s; and the largest single process, as `/usr/bin/time -v` reports it). Memory should stay
flat in corpus size: compare `--gb 0.1` with `--gb 1` (aim: <= 1.25x).

`--compare-libraries` also times datatrove's tokenizer and HF `datasets` `map(num_proc=...)` (and
litdata's `optimize`, whose torch pin needs its own venv: `--litdata-python /path/to/venv/bin/python`).

    .venv/bin/python tests/bench/bench_data.py [--gb 0.1] [--workers 2] [--repeats 3] [--compare-libraries] [--only chatsmith]

Timings are only meaningful on a quiet machine with at least `--workers` free cores; the CPU seconds
of each step's process tree (also printed) show the work done whatever the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILE_TEXT_BYTES = 5 << 20  # about 5 MB of text per corpus file: 20 files at 0.1 GB, 200 at 1 GB
ONE_THREAD = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------- corpus and tokenizer

def make_corpus(root: Path, text_bytes: int, *, seed: int = 0) -> dict:
    """Files of Zipf-distributed made-up words in sentences and documents of varied length; even files
    .jsonl.gz, odd files .parquet. Reused when `root` already holds a corpus of this size."""
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_file = root / "corpus.json"
    if meta_file.exists() and json.loads(meta_file.read_text())["target_bytes"] == text_bytes:
        return json.loads(meta_file.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "corpus").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    vocabulary = _vocabulary(rng)
    probabilities = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.07
    probabilities /= probabilities.sum()
    files = max(1, round(text_bytes / FILE_TEXT_BYTES))
    written, documents = 0, 0
    for index in range(files):
        docs = _documents(rng, vocabulary, probabilities, text_bytes // files)
        if index % 2 == 0:
            with gzip.open(root / "corpus" / f"part-{index:04d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) as handle:
                handle.writelines(json.dumps({"id": f"{index}-{i}", "text": d}) + "\n" for i, d in enumerate(docs))
        else:
            table = pa.table({"id": [f"{index}-{i}" for i in range(len(docs))], "text": docs})
            pq.write_table(table, root / "corpus" / f"part-{index:04d}.parquet", row_group_size=1000)
        written += sum(len(d.encode("utf-8")) for d in docs)
        documents += len(docs)
    meta = {"target_bytes": text_bytes, "text_bytes": written, "documents": documents, "files": files}
    meta_file.write_text(json.dumps(meta))
    return meta


def _vocabulary(rng) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = {"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(40_000)}
    return sorted(words, key=lambda w: (len(w), w))  # short words first: the frequent ones, as in English


def _documents(rng, vocabulary, probabilities, text_bytes: int) -> list[str]:
    """Documents holding about `text_bytes` of text."""
    import numpy as np

    tokens, size = [], 0
    while size < text_bytes:
        words = rng.choice(len(vocabulary), size=100_000, p=probabilities)
        stops = rng.random(len(words)) < 0.07  # a sentence ends after about one word in 14
        breaks = rng.random(len(words)) < 0.1
        for w, stop, new_line in zip(words.tolist(), stops.tolist(), breaks.tolist()):
            tokens.append(vocabulary[w] + ((".\n" if new_line else ". ") if stop else " "))
            size += len(tokens[-1])
            if size >= text_bytes:
                break
    lengths = np.clip(rng.lognormal(mean=5.5, sigma=1.0, size=len(tokens) // 50 + 1), 10, 20_000).astype(int)
    docs, start = [], 0
    for length in lengths:
        if start >= len(tokens):
            break
        docs.append("".join(tokens[start : start + length]).strip().capitalize())
        start += length
    return docs


def make_tokenizer(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from stages.data.sources import sample_texts
    from stages.tokenizer import train_tokenizer

    path = root / "tokenizer"
    if not (path / "tokenizer.json").exists():
        tokenizer = train_tokenizer(sample_texts([str(root / "corpus")], sample_bytes=4 << 20), vocab_size=1024)
        tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------- measured steps (children)

def run_child(mode: str, corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    """One measured step; returns {"seconds": ..., "tokens": ...}."""
    start = time.perf_counter()
    tokens = {"plain": _plain_loop, "chatsmith": _chatsmith, "datatrove": _datatrove, "hf": _hf_datasets,
              "litdata": _litdata}[mode](corpus, tokenizer, out, workers)
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def _read_texts(files: list[Path]):
    """Every document's text, a file at a time, as a plain script would read them."""
    import gzip

    import pyarrow.parquet as pq

    for path in files:
        if path.name.endswith(".jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                yield from (json.loads(line)["text"] for line in handle)
        else:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1000, columns=["text"]):
                yield from batch.column(0).to_pylist()


def _batches(texts, size: int = 1000):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _plain_loop(corpus, tokenizer, out, workers) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return sum(len(ids) + 1 for batch in _batches(_read_texts(sorted(corpus.iterdir()))) for ids in tok(batch)["input_ids"])


def _chatsmith(corpus, tokenizer, out, workers) -> int:
    sys.path.insert(0, str(REPO))
    from stages.data.shards import tokenize_sources

    shards = tokenize_sources([str(corpus)], tokenizer, out, num_workers=workers, progress=False)
    return sum(len(s.train) + len(s.eval) for s in shards.sources)


def _datatrove(corpus, tokenizer, out, workers) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    eos = json.loads((tokenizer / "tokenizer_config.json").read_text())["eos_token"]
    pipeline = [JsonlReader(str(corpus), glob_pattern="*.jsonl.gz"), ParquetReader(str(corpus), glob_pattern="*.parquet"),
                DocumentTokenizer(str(out / "tokens"), tokenizer_name_or_path=str(tokenizer / "tokenizer.json"),
                                  eos_token=eos, shuffle_documents=False, batch_size=1000)]
    LocalPipelineExecutor(pipeline, tasks=workers, workers=workers, logging_dir=str(out / "logs")).run()
    return sum(p.stat().st_size for p in (out / "tokens").glob("*.ds")) // 2


def _hf_datasets(corpus, tokenizer, out, workers) -> int:
    from datasets import concatenate_datasets, load_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    files = sorted(str(p) for p in corpus.iterdir())
    parts = [load_dataset("json", data_files=[f for f in files if f.endswith(".jsonl.gz")], split="train", cache_dir=str(out)),
             load_dataset("parquet", data_files=[f for f in files if f.endswith(".parquet")], split="train", cache_dir=str(out))]
    dataset = concatenate_datasets(parts)
    tokenized = dataset.map(lambda batch: {"input_ids": tok(batch["text"])["input_ids"]}, batched=True, batch_size=1000,
                            num_proc=workers, remove_columns=dataset.column_names)
    import pyarrow.compute as pc

    column = tokenized.data.column("input_ids")
    return pc.sum(pc.list_value_length(column)).as_py() + len(column)


def _litdata(corpus, tokenizer, out, workers) -> int:
    import functools

    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    optimize(fn=functools.partial(_litdata_file, tokenizer=str(tokenizer)), inputs=sorted(str(p) for p in corpus.iterdir()),
             output_dir=str(out / "litdata"), chunk_bytes="64MB", item_loader=TokensLoader(), num_workers=workers)
    return sum(p.stat().st_size for p in (out / "litdata").glob("*.bin")) // 4


def _litdata_file(path: str, tokenizer: str):
    import torch
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_file(f"{tokenizer}/tokenizer.json")
    eos = encoder.token_to_id(json.loads(Path(tokenizer, "tokenizer_config.json").read_text())["eos_token"])
    for batch in _batches(_read_texts([Path(path)])):
        for encoding in encoder.encode_batch_fast(batch, add_special_tokens=False):
            yield torch.tensor(encoding.ids + [eos], dtype=torch.int)


# ---------------------------------------------------------------- measuring

def measure(mode: str, root: Path, workers: int, python: str = sys.executable) -> dict:
    """Run a step in a child under `/usr/bin/time -v`, sampling the process tree's RSS meanwhile."""
    import psutil

    out = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-", dir=root))
    command = [python, __file__, "--child", mode, "--root", str(root), "--workers", str(workers), "--out", str(out)]
    if Path("/usr/bin/time").exists():
        command = ["/usr/bin/time", "-v"] + command
    process = subprocess.Popen(command, env={**os.environ, **ONE_THREAD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = 0
    while process.poll() is None:
        try:
            tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
            tree_peak = max(tree_peak, sum(_rss(p) for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    shutil.rmtree(out, ignore_errors=True)
    if process.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    report = dict(line.strip().rsplit(": ", 1) for line in stderr.splitlines() if line.startswith("\t") and ": " in line)
    result["tree_peak_mb"] = tree_peak / 2**20
    result["max_single_process_mb"] = int(report["Maximum resident set size (kbytes)"]) / 1024 if report else None
    # CPU seconds of the whole tree (workers included): unlike wall time, barely moved by a busy machine
    result["cpu_s"] = float(report["User time (seconds)"]) + float(report["System time (seconds)"]) if report else None
    return result


def _rss(process) -> int:
    try:
        return process.memory_info().rss
    except Exception:  # exited between listing and reading
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=0.1, help="GB of text in the corpus")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "chatsmith-bench-data")
    parser.add_argument("--only", choices=["plain", "chatsmith", "speed"], help="chatsmith: its rows only (e.g. for memory at 1 GB)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median time is reported")
    parser.add_argument("--compare-libraries", action="store_true")
    parser.add_argument("--litdata-python", help="python of a venv with litdata (it pins its own torch)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child, args.root / "corpus", args.root / "tokenizer", args.out, args.workers)
        print(json.dumps(result))
        return
    root = args.work_dir / f"{args.gb:g}gb"
    started = time.perf_counter()
    meta = make_corpus(root, int(args.gb * 1e9))
    make_tokenizer(root)
    print(f"corpus: {meta['files']} files (.jsonl.gz + .parquet), {meta['documents']:,} documents, "
          f"{meta['text_bytes'] / 1e6:.0f} MB of text, made in {time.perf_counter() - started:.0f} s", flush=True)
    rows = _plan(args)
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):  # interleaved: a slow spell of a shared machine hits every row alike
        for label, mode, workers, python in rows:
            runs.setdefault(label, []).append(measure(mode, root, workers, python))
            if args.repeats > 1:
                print(f"  [{repeat + 1}/{args.repeats}] {label}: {runs[label][-1]['seconds']:.1f} s", flush=True)
    results = {}
    for label, measured in runs.items():
        seconds = sorted(r["seconds"] for r in measured)
        result = dict(max(measured, key=lambda r: r["tree_peak_mb"]))  # the worst memory of the repeats
        result["seconds"] = seconds[len(seconds) // 2]  # the median time
        results[label] = result
        mb_s = meta["text_bytes"] / 1e6 / result["seconds"]
        single = f"{result['max_single_process_mb']:.0f} MB" if result["max_single_process_mb"] else "n/a"
        cpu = f"{result['cpu_s']:.1f} CPU s" if result["cpu_s"] else ""
        print(f"{label:24s} {result['seconds']:7.1f} s  {mb_s:6.2f} MB/s  {cpu:>11s}  {result['tokens']:>12,} tokens  "
              f"peak RSS: tree {result['tree_peak_mb']:.0f} MB, largest process {single}", flush=True)
    _print_ratios(results, args.workers)


def _plan(args) -> list[tuple[str, str, int, str]]:
    rows = []
    if args.only in (None, "plain", "speed"):
        rows.append(("plain loop (1 process)", "plain", 1, sys.executable))
    if args.only in (None, "chatsmith", "speed"):
        if args.only != "chatsmith":
            rows.append(("chatsmith 1 worker", "chatsmith", 1, sys.executable))
        rows.append((f"chatsmith {args.workers} workers", "chatsmith", args.workers, sys.executable))
    if args.compare_libraries:
        rows.append((f"datatrove {args.workers} tasks", "datatrove", args.workers, sys.executable))
        rows.append((f"hf datasets map {args.workers} procs", "hf", args.workers, sys.executable))
        if args.litdata_python:
            rows.append((f"litdata {args.workers} workers", "litdata", args.workers, args.litdata_python))
    return rows


def _print_ratios(results: dict, workers: int) -> None:
    one, many, plain = results.get("chatsmith 1 worker"), results.get(f"chatsmith {workers} workers"), results.get("plain loop (1 process)")
    if one and many:
        print(f"speed-up {workers} workers / 1 worker: {one['seconds'] / many['seconds']:.2f}x  (aim >= 1.7 for 2)")
    if one and plain:
        print(f"chatsmith 1 worker / plain loop: {plain['seconds'] / one['seconds']:.2f}x  (aim >= 1.0)")
    if many and plain:
        print(f"chatsmith {workers} workers / plain loop: {plain['seconds'] / many['seconds']:.2f}x")


if __name__ == "__main__":
    main()
