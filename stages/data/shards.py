"""Token shards: text sources tokenized once, in parallel, into a cache that later runs reuse.

In:  text `Source`s, a tokenizer dir (with `tokenizer.json`), a cache dir.
Out: a `ShardSet`: for each source, its documents' token ids, each document followed by EOS, split
     into train and held-out eval documents by a hash of the document's text, read memory-mapped.

Cache layout, one entry per source, keyed by (source fingerprint, tokenizer hash, EOS id, reader
settings, eval_fraction, part size, SHARD_FORMAT_VERSION):

    CACHE/KEY/entry.json                 what the entry is: source, files, parts, tokenizer hash, dtype
    CACHE/KEY/parts/NNNNN.{train,eval}.ds        token ids, little-endian uint16 (uint32 past 65,536 ids)
    CACHE/KEY/parts/NNNNN.{train,eval}.ds.index  cumulative document ends in tokens, uint64
    CACHE/KEY/parts/NNNNN.json           the part's counts, written last: the part is done
    CACHE/KEY/summary.json               totals, written when every part is done: the entry is complete
    CACHE/KEY.lock                       held while a run fills the entry

The `.ds` / `.ds.index` pair is datatrove's tokenized-file layout (`DatatroveFileDataset` reads it).
A source's files are cut into parts (`sources.plan_parts`) that worker processes tokenize one each; the
token stream is the parts in order, so it depends on the sources and the tokenizer only, never on the
number of workers. An interrupted run keeps its finished parts and the next run does the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from stages.data.sources import (Bad, DataError, Part, ReadCounts, Source, as_sources, check_bad_fraction,
                                 estimate_text_bytes, file_sha256, fingerprint, plan_parts, read_part, source_files)

SHARD_FORMAT_VERSION = 1
SPLITS = ("train", "eval")
# Texts handed to the tokenizer at once: big enough to amortise the call, small enough to keep a
# worker's memory flat whatever the corpus size.
ENCODE_BATCH_DOCUMENTS = 1000
ENCODE_BATCH_BYTES = 4 << 20
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ---------------------------------------------------------------- tokenizer

def tokenizer_hash(tokenizer_dir: Union[str, os.PathLike]) -> str:
    """Hash of the files that decide token ids (not the model weights a checkpoint dir may also hold)."""
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(tokenizer_dir) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(file_sha256(str(path)).encode())
    return digest.hexdigest()


def load_encoder(tokenizer_dir: Union[str, os.PathLike], eos_token_id: Optional[int] = None):
    """(the `tokenizers.Tokenizer` inside a HF tokenizer dir, the EOS id, the vocabulary size).
    `tokenizers` directly, not `transformers`: a worker starts in a fraction of a second without torch,
    and the ids are the same as `AutoTokenizer(...)(text, add_special_tokens=False)`."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.exists():
        raise DataError(f"{tokenizer_dir}: no tokenizer.json (token shards need a fast tokenizer)")
    encoder = Tokenizer.from_file(str(path))
    if eos_token_id is None:
        eos_token_id = _eos_id(Path(tokenizer_dir), encoder)
    return encoder, eos_token_id, encoder.get_vocab_size(with_added_tokens=True)


def _eos_id(tokenizer_dir: Path, encoder) -> int:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = tokenizer_dir / name
        eos = json.loads(path.read_text()).get("eos_token") if path.exists() else None
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if eos is not None and encoder.token_to_id(eos) is not None:
            return encoder.token_to_id(eos)
    raise DataError(f"{tokenizer_dir}: no eos_token in tokenizer_config.json; pass eos_token_id")


def token_dtype(vocab_size: int) -> str:
    return "<u2" if vocab_size <= 1 << 16 else "<u4"


def is_held_out(text_bytes: bytes, eval_fraction: float) -> bool:
    """Held-out by a hash of the document's text: the same document is on the same side in every run,
    whatever else the corpus holds, and duplicates of it never straddle train and eval."""
    value = int.from_bytes(hashlib.blake2b(text_bytes, digest_size=8).digest(), "little")
    return value < eval_fraction * 2.0**64


# ---------------------------------------------------------------- one part (runs in a worker)

@dataclass(frozen=True)
class PartJob:
    source: Source
    part: Part
    directory: str  # the entry's parts/ dir
    index: int
    eval_fraction: float
    eos_token_id: int
    dtype: str
    hash_file: bool  # the file's first part also records its sha256, for `ShardSet.verify`

    def prefix(self) -> Path:
        return Path(self.directory) / f"{self.index:05d}"


_WORKER: dict[str, Any] = {}


def _start_worker(tokenizer_dir: str, eos_token_id: int, progress_queue) -> None:
    # One thread per worker: the workers are the parallelism; nested Rayon threads would fight them.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _load_worker(tokenizer_dir, eos_token_id, progress_queue.put)


def _load_worker(tokenizer_dir: str, eos_token_id: int, report) -> None:
    _WORKER["encoder"] = load_encoder(tokenizer_dir, eos_token_id)[0]
    _WORKER["report"] = report


class TokenFileWriter:
    """Appends documents' token ids (each followed by EOS) to `NAME.ds` and, on close, their cumulative
    ends to `NAME.ds.index`; both written under `.tmp` names and renamed into place."""

    def __init__(self, path: Path, *, dtype: str, eos_token_id: int):
        self.path, self.dtype, self.eos = path, np.dtype(dtype), eos_token_id
        self.handle = open(f"{path}.tmp", "wb")
        self.ends: list[np.ndarray] = []
        self.tokens = 0

    def write(self, documents: list[list[int]]) -> None:
        if not documents:
            return
        ends = np.cumsum(np.fromiter(map(len, documents), np.int64, len(documents)) + 1)
        tokens = np.full(ends[-1], self.eos, dtype=self.dtype)
        is_text = np.ones(ends[-1], dtype=bool)
        is_text[ends - 1] = False
        tokens[is_text] = np.fromiter(itertools.chain.from_iterable(documents), self.dtype, ends[-1] - len(documents))
        self.handle.write(tokens.tobytes())
        self.ends.append(ends + self.tokens)
        self.tokens += int(ends[-1])

    def close(self) -> None:
        self.handle.close()
        ends = np.concatenate(self.ends) if self.ends else np.zeros(0, np.int64)
        ends.astype("<u8").tofile(f"{self.path}.index.tmp")
        os.replace(f"{self.path}.tmp", self.path)
        os.replace(f"{self.path}.index.tmp", f"{self.path}.index")


def tokenize_part(job: PartJob) -> dict:
    """Tokenize one part into train and eval token files; return (and write, last) its counts."""
    encoder, report = _WORKER["encoder"], _WORKER["report"]
    writers = {split: TokenFileWriter(Path(f"{job.prefix()}.{split}.ds"), dtype=job.dtype, eos_token_id=job.eos_token_id)
               for split in SPLITS}
    totals = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
    counts, batch, batch_bytes = ReadCounts(), [], 0
    for record in read_part(job.source, job.part):
        if isinstance(record, Bad):
            counts.add_bad(record)
        elif not record:
            counts.empty += 1
        else:
            counts.records += 1
            batch.append(record)
            batch_bytes += len(record)
            if len(batch) >= ENCODE_BATCH_DOCUMENTS or batch_bytes >= ENCODE_BATCH_BYTES:
                report(_encode(batch, encoder, writers, totals, job.eval_fraction))
                batch, batch_bytes = [], 0
    report(_encode(batch, encoder, writers, totals, job.eval_fraction))
    for writer in writers.values():
        writer.close()
    stats = {"part": asdict(job.part), "splits": totals, **asdict(counts),
             "file_sha256": file_sha256(job.part.path) if job.hash_file else None}
    _write_json(Path(f"{job.prefix()}.json"), stats)
    return stats


def _encode(texts: list[str], encoder, writers: dict, totals: dict, eval_fraction: float) -> tuple[int, int]:
    """Tokenize a batch, route each document to its split; return (text bytes, tokens) for progress."""
    if not texts:
        return 0, 0
    documents = {split: [] for split in SPLITS}
    n_bytes = n_tokens = 0
    for text, encoding in zip(texts, encoder.encode_batch_fast(texts, add_special_tokens=False)):
        raw = text.encode("utf-8")
        split = "eval" if is_held_out(raw, eval_fraction) else "train"
        documents[split].append(encoding.ids)
        totals[split]["documents"] += 1
        totals[split]["tokens"] += len(encoding.ids) + 1
        totals[split]["bytes"] += len(raw)
        n_bytes += len(raw)
        n_tokens += len(encoding.ids) + 1
    for split in SPLITS:
        writers[split].write(documents[split])
    return n_bytes, n_tokens


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the cache

@dataclass(frozen=True)
class Settings:
    """What besides the source decides an entry's tokens."""

    tokenizer_hash: str
    eos_token_id: int
    dtype: str
    eval_fraction: float
    part_bytes: int


def default_cache_dir() -> Path:
    """Where token shards live unless a recipe says: `$CHATSMITH_CACHE/token-shards`, else the user's
    cache dir (`$XDG_CACHE_HOME` or ~/.cache) `/chatsmith/token-shards`. Shared by every run of the user."""
    if os.environ.get("CHATSMITH_CACHE"):
        return Path(os.environ["CHATSMITH_CACHE"]) / "token-shards"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatsmith" / "token-shards"


def entry_key(source: Source, settings: Settings) -> str:
    reader = source.model_dump(include={"format", "text_field", "kind", "txt_document"})
    blob = json.dumps({"version": SHARD_FORMAT_VERSION, "source": fingerprint(source), "reader": reader,
                       **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _prepare_entry(source: Source, key: str, settings: Settings, cache_dir: Path) -> tuple[Path, list[Part]]:
    """The entry's dir with entry.json, and its parts (planned once, then read back, so a resumed run
    fills exactly the parts the first one planned)."""
    directory = cache_dir / key
    entry_file = directory / "entry.json"
    if entry_file.exists():
        return directory, [Part(**p) for p in json.loads(entry_file.read_text())["parts"]]
    files = source_files(source)
    parts = plan_parts(files, part_bytes=settings.part_bytes)
    (directory / "parts").mkdir(parents=True, exist_ok=True)
    _write_json(entry_file, {"key": key, "version": SHARD_FORMAT_VERSION, "label": source.label,
                             "source": source.model_dump(mode="json"), "settings": asdict(settings),
                             "files": [asdict(f) for f in files], "parts": [asdict(p) for p in parts],
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return directory, parts


def _summarise(directory: Path, parts: list[Part], source: Source, max_bad_fraction: float) -> dict:
    stats = [json.loads((directory / "parts" / f"{i:05d}.json").read_text()) for i in range(len(parts))]
    counts = ReadCounts()
    for s in stats:
        counts.merge(ReadCounts(s["records"], s["bad"], s["empty"], s["first_bad"]))
    check_bad_fraction(source.label, counts, max_bad_fraction)
    splits = {split: {k: sum(s["splits"][split][k] for s in stats) for k in ("documents", "tokens", "bytes")}
              for split in SPLITS}
    if splits["train"]["tokens"] == 0:
        raise DataError(f"source {source.label!r}: no training text ({counts.records} documents, all held out or empty)")
    summary = {"label": source.label, "parts": len(parts), "splits": splits, **asdict(counts),
               "part_tokens": {split: [s["splits"][split]["tokens"] for s in stats] for split in SPLITS}}
    _write_json(directory / "summary.json", summary)
    return summary


def cache_entries(cache_dir: Union[str, os.PathLike]) -> list[dict]:
    """Every entry in a cache dir (for `chatsmith data ls`): key, label, paths, complete, parts done,
    tokens, size on disk, created."""
    rows = []
    for entry_file in sorted(Path(cache_dir).glob("*/entry.json")):
        directory = entry_file.parent
        entry = json.loads(entry_file.read_text())
        summary_file = directory / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
        rows.append({
            "key": entry["key"], "label": entry["label"], "paths": entry["source"]["paths"],
            "complete": summary is not None,
            "parts_done": len(list((directory / "parts").glob("*[0-9].json"))), "parts": len(entry["parts"]),
            "tokens": sum(summary["splits"][s]["tokens"] for s in SPLITS) if summary else None,
            "bytes_on_disk": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
            "created": entry["created"],
        })
    return rows


def remove_cache_entries(cache_dir: Union[str, os.PathLike], keys: Optional[Iterable[str]] = None) -> list[str]:
    """Remove the entries with these keys (or key prefixes), or every entry (for `chatsmith data clean`).
    An entry a run is filling right now is refused."""
    from filelock import FileLock, Timeout

    cache_dir = Path(cache_dir)
    present = [row["key"] for row in cache_entries(cache_dir)]
    chosen = present if keys is None else [k for k in present if any(k.startswith(p) for p in keys)]
    for key in chosen:
        try:
            with FileLock(str(cache_dir / f"{key}.lock"), timeout=0):
                shutil.rmtree(cache_dir / key)
        except Timeout:
            raise DataError(f"{cache_dir / key}: in use by another run; not removed") from None
        (cache_dir / f"{key}.lock").unlink(missing_ok=True)
    return chosen


# ---------------------------------------------------------------- tokenize

def tokenize_sources(sources, tokenizer_dir: Union[str, os.PathLike], cache_dir: Union[str, os.PathLike], *,
                     num_workers: Optional[int] = None, eval_fraction: float = 0.02, max_bad_fraction: float = 0.01,
                     part_bytes: int = 64 << 20, eos_token_id: Optional[int] = None, verify: bool = False,
                     progress: bool = True) -> "ShardSet":
    """Token shards of text sources, from the cache when an entry exists, else tokenized by `num_workers`
    processes (default: the CPU count; 1 runs in this process), one part of about `part_bytes` at a time.
    A document goes to eval with probability `eval_fraction`, by a hash of its text; more than
    `max_bad_fraction` unusable records in a source is an error. `eos_token_id` defaults to the
    tokenizer's EOS. `verify` re-hashes the source files of reused entries. Prints a progress bar and a
    summary per source (`progress`); raises `DataError`, in one line, on bad input."""
    from filelock import FileLock

    sources = as_sources(sources)
    for index, source in enumerate(sources):
        if source.kind != "text":
            raise DataError(f"source {source.label!r}: kind {source.kind!r}; only text sources are tokenized into shards")
        if any(other.label == source.label for other in sources[:index]):
            raise DataError(f"two sources are labelled {source.label!r}; give each a name (per-source metrics use it)")
    _, eos_token_id, vocab_size = load_encoder(tokenizer_dir, eos_token_id)
    settings = Settings(tokenizer_hash(tokenizer_dir), eos_token_id, token_dtype(vocab_size), eval_fraction, part_bytes)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys = [entry_key(source, settings) for source in sources]
    # Locks in key order: two runs that share entries never wait on each other in a circle.
    locks = [FileLock(str(cache_dir / f"{key}.lock")) for key in sorted(set(keys))]
    for lock in locks:
        lock.acquire()
    try:
        work = {}
        for source, key in zip(sources, keys):
            if key not in work and not (cache_dir / key / "summary.json").exists():
                work[key] = (source, *_prepare_entry(source, key, settings, cache_dir))
        jobs = [job for key, (source, directory, parts) in work.items()
                for job in _pending_jobs(source, directory, parts, settings)]
        if jobs:
            _run_jobs(jobs, tokenizer_dir, eos_token_id, num_workers=num_workers, progress=progress)
        for key, (source, directory, parts) in work.items():
            _summarise(directory, parts, source, max_bad_fraction)
    finally:
        for lock in reversed(locks):
            lock.release()
    shards = ShardSet.open(cache_dir, keys, sources=sources, max_bad_fraction=max_bad_fraction)
    shards.tokenized_parts = len(jobs)
    if verify:
        shards.verify()
    if progress:
        print(shards.describe(), flush=True)
    return shards


def _pending_jobs(source: Source, directory: Path, parts: list[Part], settings: Settings) -> list[PartJob]:
    jobs, seen_files = [], set()
    for index, part in enumerate(parts):
        first_of_file = part.path not in seen_files
        seen_files.add(part.path)
        if not (directory / "parts" / f"{index:05d}.json").exists():
            jobs.append(PartJob(source, part, str(directory / "parts"), index, settings.eval_fraction,
                                settings.eos_token_id, settings.dtype, hash_file=first_of_file))
    return jobs


def _run_jobs(jobs: list[PartJob], tokenizer_dir, eos_token_id: int, *, num_workers: Optional[int],
              progress: bool) -> None:
    """Tokenize the parts, biggest first (so the last one to finish is a small one), with a progress bar
    in MB/s of input files and tokens/s."""
    import multiprocessing

    from tqdm.auto import tqdm

    num_workers = min(num_workers or os.cpu_count() or 1, len(jobs))
    jobs = sorted(jobs, key=_job_size, reverse=True)
    bar = tqdm(total=sum(map(_job_size, jobs)), unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    meter = _Meter(bar)
    if num_workers == 1:  # in this process, with its own thread settings
        _load_worker(str(tokenizer_dir), eos_token_id, meter.add)
        for job in jobs:
            tokenize_part(job)
            bar.update(_job_size(job))
    else:
        context = multiprocessing.get_context("spawn")  # fork would copy a parent's threads (torch, tokenizers)
        queue = context.Queue()
        with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_start_worker,
                                 initargs=(str(tokenizer_dir), eos_token_id, queue)) as pool:
            pending = {pool.submit(tokenize_part, job): job for job in jobs}
            try:
                while pending:
                    done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    meter.drain(queue)
                    for future in done:
                        future.result()  # a worker's DataError surfaces here
                        bar.update(_job_size(pending.pop(future)))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        meter.drain(queue)
    bar.close()


def _job_size(job: PartJob) -> int:
    if job.part.stop is not None and job.part.format == "jsonl":
        return job.part.stop - job.part.start
    return os.path.getsize(job.part.path) if job.part.stop is None else _parquet_part_size(job.part)


def _parquet_part_size(part: Part) -> int:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(part.path).metadata
    rows = sum(metadata.row_group(g).num_rows for g in range(part.start, part.stop))
    return os.path.getsize(part.path) * rows // max(metadata.num_rows, 1)


class _Meter:
    """Text MB/s and tokens/s on the progress bar, from the (bytes, tokens) each encoded batch reports."""

    def __init__(self, bar):
        self.bar, self.start, self.text_bytes, self.tokens = bar, time.perf_counter(), 0, 0

    def add(self, item: tuple[int, int]) -> None:
        self.text_bytes += item[0]
        self.tokens += item[1]
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = f"text {self.text_bytes / elapsed / 1e6:.2f} MB/s, {self.tokens / elapsed / 1e3:.0f}k tok/s"
        self.bar.set_postfix_str(rates, refresh=False)

    def drain(self, queue) -> None:
        import queue as queue_module

        while True:
            try:
                self.add(queue.get_nowait())
            except queue_module.Empty:
                return


# ---------------------------------------------------------------- reading shards

class TokenStream:
    """A split of one source as one flat token sequence (its parts' `.ds` files end to end), read
    memory-mapped: a slice costs the pages it touches, never the whole corpus."""

    def __init__(self, files: list[Path], lengths: list[int], dtype: str):
        kept = [(f, n) for f, n in zip(files, lengths) if n > 0]
        self.files = [f for f, _ in kept]
        self.starts = np.cumsum([0] + [n for _, n in kept])
        self.dtype = np.dtype(dtype)
        # bounded: a corpus of thousands of parts must not hold thousands of open maps
        self._map = lru_cache(maxsize=64)(self._open)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64."""
        pieces = []
        index = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            begin, end = self.starts[index], self.starts[index + 1]
            take = min(stop, end) - start
            pieces.append(self._map(index)[start - begin : start - begin + take])
            start += take
            index += 1
        return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)

    def _open(self, index: int) -> np.memmap:
        return np.memmap(self.files[index], dtype=self.dtype, mode="r")


@dataclass
class SourceShards:
    """One source's cache entry: its label and weight, its counts, its train and eval token streams."""

    key: str
    directory: Path
    label: str
    weight: float
    summary: dict
    train: TokenStream
    eval: TokenStream


class ShardSet:
    """The token shards of a list of sources (one cache entry each), ready to read."""

    def __init__(self, sources: list[SourceShards], *, eos_token_id: int, dtype: str):
        self.sources, self.eos_token_id, self.dtype = sources, eos_token_id, dtype
        self.tokenized_parts = 0  # parts the call that made this set tokenized (0: all from the cache)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.sources]

    @classmethod
    def open(cls, cache_dir: Union[str, os.PathLike], keys: list[str], *, sources: Optional[list[Source]] = None,
             max_bad_fraction: float = 1.0) -> "ShardSet":
        """Complete cache entries by key (what a resumed run recorded): no source file is read. Labels
        and weights come from `sources` (the recipe's, in key order), else from when each was tokenized."""
        opened, settings = [], []
        for index, key in enumerate(keys):
            directory = Path(cache_dir) / key
            if not (directory / "summary.json").exists():
                raise DataError(f"{directory}: no complete token shards (run `chatsmith data tokenize`)")
            entry = json.loads((directory / "entry.json").read_text())
            summary = json.loads((directory / "summary.json").read_text())
            settings.append({k: entry["settings"][k] for k in ("eos_token_id", "dtype", "tokenizer_hash")})
            counts = ReadCounts(summary["records"], summary["bad"], summary["empty"], summary["first_bad"])
            check_bad_fraction(entry["label"], counts, max_bad_fraction)
            streams = {split: TokenStream([directory / "parts" / f"{i:05d}.{split}.ds" for i in range(summary["parts"])],
                                          summary["part_tokens"][split], entry["settings"]["dtype"])
                       for split in SPLITS}
            label, weight = entry["label"], entry["source"]["weight"]
            if sources:
                label, weight = sources[index].label, sources[index].weight
            opened.append(SourceShards(key, directory, label, weight, summary, streams["train"], streams["eval"]))
        if any(s != settings[0] for s in settings):
            raise DataError(f"cache entries {', '.join(keys)} were tokenized with different tokenizers")
        return cls(opened, eos_token_id=settings[0]["eos_token_id"], dtype=settings[0]["dtype"])

    def verify(self) -> None:
        """Re-hash every source file and compare with the hash taken when it was tokenized."""
        for source in self.sources:
            recorded = {}
            for stats_file in sorted((source.directory / "parts").glob("*[0-9].json")):
                stats = json.loads(stats_file.read_text())
                if stats["file_sha256"]:
                    recorded[stats["part"]["path"]] = stats["file_sha256"]
            for path, digest in recorded.items():
                if file_sha256(path) != digest:
                    raise DataError(f"{path}: changed since it was tokenized into {source.directory} "
                                    f"(same size and mtime, other content); remove that entry and tokenize again")

    def describe(self) -> str:
        """One line per source: documents, tokens and text bytes (train / eval), unusable records."""
        lines = []
        for s in self.sources:
            train, held = s.summary["splits"]["train"], s.summary["splits"]["eval"]
            lines.append(f"  {s.label}: {train['documents'] + held['documents']:,} documents, "
                         f"{train['tokens']:,} train + {held['tokens']:,} eval tokens, "
                         f"{(train['bytes'] + held['bytes']) / 1e6:,.1f} MB of text, "
                         f"{s.summary['bad']:,} bad and {s.summary['empty']:,} empty records skipped")
        return "token shards:\n" + "\n".join(lines)


def estimate_shard_bytes(sources, tokenizer_dir: Optional[Union[str, os.PathLike]] = None, *,
                         bytes_per_token: float = 3.0) -> int:
    """Disk the shards of these sources will take, before tokenizing (for preflight). With a tokenizer,
    its bytes per token on a sample of the text; without one (it is trained later in the run),
    `bytes_per_token` and 4-byte ids, which errs on the large side."""
    encoder = load_encoder(tokenizer_dir)[0] if tokenizer_dir else None
    id_bytes = token_dtype(encoder.get_vocab_size(with_added_tokens=True)) if encoder else "<u4"
    total = 0.0
    for source in as_sources(sources):
        text_bytes, sample = estimate_text_bytes(source)
        if not sample:
            continue
        sample_bytes = sum(len(t.encode("utf-8")) for t in sample)
        if encoder is not None:
            sample_tokens = sum(len(e.ids) + 1 for e in encoder.encode_batch_fast(sample, add_special_tokens=False))
        else:
            sample_tokens = sample_bytes / bytes_per_token + len(sample)
        tokens = text_bytes * sample_tokens / max(sample_bytes, 1)
        documents = text_bytes * len(sample) / max(sample_bytes, 1)
        total += tokens * np.dtype(id_bytes).itemsize + documents * 8  # ids + one uint64 end per document
    return int(total)
