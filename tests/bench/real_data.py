"""The public human data the real-model benchmarks and the small real RLHF run read, and where to get them.

Nothing here downloads: the files are fetched once by the user (the commands are in `WHERE` and in the message
a missing file gives), then read from `$CHATSMITH_CACHE/data` (default `~/.cache/chatsmith/data`) or the paths
given on the command line.

- Anthropic HH-RLHF, `harmless-base/test.jsonl.gz` (2,312 pairs): in the GitHub repository `anthropics/hh-rlhf` it
  is the only split stored as a real file; the others are Git LFS pointers.
- OpenAssistant, `model/model_eval/manual/data/en_100_tree.jsonl`: 100 English message trees in the GitHub
  repository `LAION-AI/Open-Assistant`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HH = "hh"
OA = "oa"
FILES = {
    HH: ("hh-rlhf/harmless-base/test.jsonl.gz",
         "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03",
         "https://raw.githubusercontent.com/anthropics/hh-rlhf/master/harmless-base/test.jsonl.gz",
         "anthropics/hh-rlhf harmless-base/test.jsonl.gz (commit 354e5c3)"),
    OA: ("open-assistant/en_100_tree.jsonl",
         "a27639214a5098bf9e1cc62a855c85c630b64ab48ee94655e7f6046438b0aedb",
         "https://raw.githubusercontent.com/LAION-AI/Open-Assistant/main/model/model_eval/manual/data/en_100_tree.jsonl",
         "LAION-AI/Open-Assistant model/model_eval/manual/data/en_100_tree.jsonl (commit f1e6ed9)"),
}
"""name -> (path under the data dir, sha256 of the file as the repositories hold it, raw URL, what it is)."""


def data_dir() -> Path:
    if os.environ.get("CHATSMITH_CACHE"):
        return Path(os.environ["CHATSMITH_CACHE"]) / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatsmith" / "data"


def default_path(name: str) -> Path:
    return data_dir() / FILES[name][0]


def where(name: str, path: Path) -> str:
    """How to get the file to `path` (one shell line)."""
    _, _, url, _ = FILES[name]
    return f"curl -L --create-dirs -o {path} {url}"


def missing(paths: dict[str, Path]) -> list[str]:
    """One line per file that is not there, with the command that fetches it; a file whose sha256 differs from the
    one the benchmarks were measured on is named too (still usable: the figures will not be comparable)."""
    lines = []
    for name, path in paths.items():
        what = FILES[name][3]
        if not path.is_file():
            lines.append(f"{path}: missing ({what}); get it with: {where(name, path)}")
            continue
        with open(path, "rb") as handle:
            if handle.read(len(b"version https://git-lfs")) == b"version https://git-lfs":
                lines.append(f"{path}: a Git LFS pointer, not the data; get the file with: {where(name, path)}")
    return lines


def sha256_matches(name: str, path: Path) -> bool:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() == FILES[name][1]


def hh_comparisons(path: Path) -> list[dict]:
    """The HH pairs in file order as TRL preference rows (`labeling`'s HH reader splits each transcript into the
    shared prompt and the two final replies)."""
    from labeling.readers import read_hh

    rows = []
    for item in read_hh(Path(path)):
        record = item.record
        if record is None:
            continue
        replies = {c["id"]: c["content"] for c in record["candidates"]}
        rows.append({"prompt": record["prompt"], "chosen": [{"role": "assistant", "content": replies["chosen"]}],
                     "rejected": [{"role": "assistant", "content": replies["rejected"]}]})
    return rows


def oa_conversations(path: Path) -> list[dict]:
    """OpenAssistant demonstrations (the best-ranked reply at the end of each path, as `labeling` ingests them) as
    `{"messages": [...]}` conversations, in file order."""
    from labeling.readers import read_oasst

    rows = []
    for item in read_oasst(Path(path)):
        record = item.record
        if record is not None and record.get("kind") == "demonstration":
            rows.append({"messages": [*record["prompt"], {"role": "assistant", "content": record["reply"]}]})
    return rows
