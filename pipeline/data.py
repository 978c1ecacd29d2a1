"""The run's datasets: the demo world's, or the recipe's sources; pretraining text tokenized into shards.

    materialise_data(run)   DIR/data/: the demo world's files, or the recipe's prompts normalised to JSONL;
                            DIR/labels/: labeler exports ingested, and every SFT / comparison source (files
                            and labels together, never one replacing another) built into
                            DIR/labels/build/{sft,comparisons}_{train,eval}.jsonl, split by prompt.
                            On the demo, your sources join the world's: its SFT conversations and your
                            sources build into DIR/labels/sft-build before SFT; the simulated labelers'
                            comparisons and yours into DIR/labels/build before the reward stage
                            (`build_source_comparisons`). Each build of labeler judgments screens the labelers
                            (`data.screen`: figures in its screening.json, flagged labelers said, and left out of
                            training only with `exclude_flagged`)
    ensure_corpus(run)      the pretraining text as cached token shards (`stages.data`), tokenized once by
                            N processes; DIR/data/corpus.json names the cache entries (its hash is the
                            pretrain stage's data lineage: nothing of the corpus is copied or re-hashed)

Bad input is a `DataError` (or `labeling`'s `InputError`) whose message is one line naming the recipe key
and the file: `chatsmith` prints it and exits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from stages.common import write_json_atomic, write_jsonl
from stages.data.sources import DataError, read_records

DATASETS = ("pretrain", "sft_train", "sft_eval", "prompts", "eval_prompts")
CORPUS_FILE = "corpus.json"


def config_sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def cache_root(run) -> Path:
    from stages.data import default_cache_dir

    return Path(run.recipe.data.cache_dir).expanduser() if run.recipe.data.cache_dir else default_cache_dir()


class FilesSource:
    """The run's data from the recipe's own files (`data.source: files`). The demo world (`pipeline.demo.Demo`) is the
    other data source; the runner asks its source, never which one it is (`pipeline.registry.data_source`)."""

    name = "files"
    sft_build_name = "build"
    """Where the SFT rows built from the recipe's sources are: DIR/labels/build."""

    def __init__(self, run):
        self.run = run

    def write_data(self) -> None:
        """DIR/data/{prompts,eval_prompts}.jsonl: the recipe's prompt sources, normalised to JSONL."""
        data = self.run.recipe.data
        for key in ("prompts", "eval_prompts"):
            if getattr(data, key):
                normalise(f"data.{key}", getattr(data, key), self.run.data_path(f"{key}.jsonl"), data.max_bad_fraction, self.run.say)

    def pretrain_sources(self) -> list:
        return list(self.run.recipe.data.pretrain_text or [])

    def sft_files(self) -> tuple[list[str], list[str]]:
        """(train, held out) SFT files of the source's own, built with the recipe's: none."""
        return [], []

    def judged_settings(self) -> dict:
        return {"world": None}

    def before_stage(self, name: str) -> None:
        pass

    def judges(self) -> dict:
        return {}

    def monitor_judge(self, stage_config):
        return None

    def arena_judge(self):
        return None

    def stage_figures(self, records: list[dict], rows: list[dict]) -> dict:
        return {}

    split_group = None
    """(opening question) -> the group its prompts are held out with (`labeling.build`'s `split_group`); None: by prompt."""

    def reward_figures(self, pairs, chosen, rejected, clusters) -> dict:
        return {}


def pretrain_sources(run) -> list:
    """The pretraining text sources (`data.pretrain_text`, or the demo world's documents), resolved once per run."""
    if run.pretrain_sources is None:
        run.pretrain_sources = run.source.pretrain_sources()
    return run.pretrain_sources


def sources_fingerprint(run) -> Path:
    """DIR/data/pretrain_sources.json: each pretraining source with its cheap fingerprint (file names, sizes,
    modification times; no content read) — what lineage hashes instead of the corpus. Written once per run, and
    only when it changes."""
    from stages.data.sources import fingerprint

    path = run.data_path("pretrain_sources.json")
    if run.fingerprinted:
        return path
    record = [{**s.model_dump(mode="json"), "fingerprint": fingerprint(s)} for s in pretrain_sources(run)]
    if not path.exists() or json.loads(path.read_text()) != record:
        write_json_atomic(path, record)
    run.fingerprinted = True
    return path


def has_built_data(run) -> bool:
    """Whether SFT data come from a build of file and labeler sources (DIR/labels/build; on the demo,
    DIR/labels/sft-build: the world's conversations with yours) rather than DIR/data."""
    data = run.recipe.data
    return bool(data.sft or data.sft_eval or data.comparisons or data.comparisons_eval or data.labels)


def sft_build_dir(run) -> Path:
    """Where the SFT rows built from the recipe's sources are: DIR/labels/build, or on the demo DIR/labels/sft-build
    (DIR/labels/build then holds the comparisons made after SFT)."""
    return run.dir / "labels" / run.source.sft_build_name


def _user_files_stamp(data) -> list:
    """Name, size and mtime of every label and SFT / comparison file: a re-export to the same path
    (more rewrites, say) rebuilds the data, and the stages that read it re-run."""
    from stages.data.sources import fingerprint

    stamp = [[key, fingerprint(source)] for key in ("sft", "sft_eval", "comparisons", "comparisons_eval")
             for source in getattr(data, key) or []]
    for export in data.labels:
        for path in (export.path, export.tasks):
            if path and Path(path).is_file():
                info = Path(path).stat()
                stamp.append(["labels", str(path), info.st_size, info.st_mtime_ns])
    return stamp


def materialise_data(run) -> None:
    """Write the run's datasets (skipped when already written for the same data config and files)."""
    data = run.recipe.data
    stamp = run.data_path("data.json")
    sha = config_sha([data.model_dump(mode="json"), _user_files_stamp(data)])
    if stamp.exists() and json.loads(stamp.read_text()).get("config_sha256") == sha:
        return
    run.data_dir.mkdir(parents=True, exist_ok=True)
    run.source.write_data()
    if has_built_data(run):
        build_labels(run)
    write_json_atomic(stamp, {"config_sha256": sha, "source": data.source})


def normalise(key: str, sources, path: Path, max_bad_fraction: float, say=print) -> dict:
    """The usable records of the recipe's `key` sources -> `path` (JSONL, each record in its checked form); every
    record that cannot be used -> `path` with `.rejected.jsonl`, one line each with the user's file and line
    (`where`) and why (`reason`), as a labeler export's bad records are set aside. Returns {"read", "accepted",
    "rejected"}, with read == accepted + rejected. More than `max_bad_fraction` of a source's records unusable is a
    `DataError` naming the key and the file (preflight refuses such a source before any work)."""
    from stages.data.sources import ReadCounts

    rejected: list = []
    accepted = 0

    def rows():
        nonlocal accepted
        for source in sources:
            try:
                for record in read_records(source, max_bad_fraction=max_bad_fraction, counts=ReadCounts(rejected=rejected)):
                    accepted += 1
                    yield record
            except DataError as error:
                raise DataError(f"{key}: {error}") from None

    write_jsonl(path, rows())
    rejected_path = path.with_name(path.name.removesuffix(".jsonl") + ".rejected.jsonl")
    write_jsonl(rejected_path, ({"where": bad.where, "reason": bad.reason} for bad in rejected))
    summary = {"read": accepted + len(rejected), "accepted": accepted, "rejected": len(rejected)}
    if rejected:
        say(f"data: {key}: {len(rejected)} of {summary['read']} records set aside in {rejected_path} "
            f"(first: {rejected[0]})")
    return summary


USER_INGEST = "user-ingest"
"""DIR/labels/user-ingest/NN-FORMAT-STEM: the recipe's labeler exports, ingested."""


def build_labels(run) -> dict:
    """Labeler exports -> DIR/labels/user-ingest; with the SFT and comparison files (and on the demo, the
    world's SFT conversations) -> `sft_build_dir(run)`."""
    from labeling.build import build
    from labeling.ingest import ingest_all

    data, labels = run.recipe.data, run.dir / "labels"
    files = _user_files(run)
    shutil.rmtree(labels / USER_INGEST, ignore_errors=True)  # only the exports the recipe lists now
    ingested = ingest_all([s.model_dump() for s in data.labels], labels / USER_INGEST) if data.labels else []
    for summary in ingested:
        run.say(f"labels: {summary['dir']}: read {summary['read']}, accepted {summary['accepted']}, "
                f"rejected {summary['rejected']} {summary.get('reasons') or ''}")
    # The source's own conversations (the demo world's) keep their split: held-out ones stay held out, the rest train.
    source_train, source_eval = run.source.sft_files()
    built = build([s["dir"] for s in ingested], sft_build_dir(run), eval_fraction=data.eval_fraction,
                  seed=run.recipe.seed, sft_files=files["sft"], comparison_files=files["comparisons"],
                  sft_eval_files=[*source_eval, *files["sft_eval"]], comparison_eval_files=files["comparisons_eval"],
                  sft_train_files=source_train, split_group=run.source.split_group,
                  screening=data.screen if ingested else None)
    _say_screening(run, built)
    run.say(f"data: built {built['sft_train']} + {built['sft_eval']} SFT rows and {built['comparisons_train']} + "
            f"{built['comparisons_eval']} comparisons (train + held out) from {len(built.get('by_source', {}))} sources")
    return {"ingest": ingested, "build": built}


def _user_files(run, *, write: bool = True) -> dict[str, list[str]]:
    """The recipe's SFT and comparison sources, normalised (messages / TRL preference rows) into
    DIR/labels/sources/KEY-N.jsonl (`write`), else the paths written before."""
    data, sources = run.recipe.data, run.dir / "labels" / "sources"
    files = {}
    for key in ("sft", "sft_eval", "comparisons", "comparisons_eval"):
        files[key] = []
        for number, source in enumerate(getattr(data, key) or []):
            path = sources / f"{key}-{number}.jsonl"
            if write:
                normalise(f"data.{key}", [source], path, data.max_bad_fraction, run.say)
            files[key].append(str(path))
    return files


def build_source_comparisons(run, fmt: str, export: Path, *, tasks: Path | None = None) -> dict:
    """A labeler export the data source made (the demo's simulated labelers') -> DIR/labels/ingest, built with the
    recipe's own labels and comparison files (`build_labels` ingested and normalised them) -> DIR/labels/build."""
    from labeling.build import build
    from labeling.ingest import ingest

    labels = run.dir / "labels"
    summary = ingest(fmt, export, labels / "ingest", tasks_path=tasks)
    run.say(f"labels: read {summary['read']}, accepted {summary['accepted']}, rejected {summary['rejected']} "
            f"{summary.get('reasons') or ''}")
    files = _user_files(run, write=False)
    user_ingested = sorted(str(p) for p in (labels / USER_INGEST).glob("[0-9][0-9]-*") if p.is_dir())
    built = build([labels / "ingest", *user_ingested], labels / "build", eval_fraction=run.recipe.data.eval_fraction,
                  seed=run.recipe.seed, comparison_files=files["comparisons"],
                  comparison_eval_files=files["comparisons_eval"], split_group=run.source.split_group,
                  screening=run.recipe.data.screen)
    _say_screening(run, built)
    return {"ingest": summary, "build": built}


def _say_screening(run, built: dict) -> None:
    """One line per labeler screening flagged (`data.screen`), and whether their judgments were left out."""
    screened = built.get("screening")
    for who, detail in (screened or {}).get("detail", {}).items():
        excluded = sum(built["excluded"]["by_labeler"].get(who, {}).values())
        action = f"{excluded} judgments excluded" if screened["exclude_flagged"] else "kept (data.screen.exclude_flagged: false)"
        run.say(f"labels: screening flagged {who}: {detail}; {action}")


def ensure_corpus(run) -> Path:
    """Token shards of the pretraining text (tokenized now unless the cache has them) and DIR/data/corpus.json."""
    from stages.data import tokenize_sources

    data, pretrain = run.recipe.data, run.recipe.stages.pretrain
    sources = pretrain_sources(run)
    if not sources:
        raise DataError("data.pretrain_text: the pretrain stage needs pretraining text")
    cache_dir = cache_root(run)
    tokenizer_dir = run.dir / "tokenizer"
    document_eos = _document_eos_id(tokenizer_dir)
    shards = tokenize_sources(sources, tokenizer_dir, cache_dir, num_workers=data.tokenize_workers,
                              eval_fraction=pretrain.eval_fraction, max_bad_fraction=data.max_bad_fraction,
                              eos_token_id=document_eos, verify=data.verify_sources)
    run.say(f"data: {shards.tokenized_parts} parts tokenized" if shards.tokenized_parts
            else "data: token shards from the cache (nothing tokenized)")
    corpus = {"cache_dir": str(cache_dir), "keys": shards.keys, "weights": [s.weight for s in sources],
              "sources": [s.model_dump(mode="json") for s in sources], "eos_token_id": document_eos}
    path = run.data_path(CORPUS_FILE)
    if not path.exists() or json.loads(path.read_text()) != corpus:
        write_json_atomic(path, corpus)  # rewritten only when the data changed: its hash is the lineage
    return path


def _document_eos_id(tokenizer_dir: Path) -> int:
    """The token between documents: the chat format's document EOS (`<|endoftext|>`, not `<|im_end|>`)."""
    from stages.chat_format import read_chat_format

    chat_format = read_chat_format(tokenizer_dir)
    if chat_format is not None and chat_format.document_eos_id is not None:
        return chat_format.document_eos_id
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir)).eos_token_id
