"""`chatsmith data tokenize|ls|clean`: the token shards of the pretraining text, a cache that runs reuse.

    chatsmith data tokenize RECIPE [--out DIR]   the recipe's pretraining text -> cached token shards
    chatsmith data ls [--cache-dir D]            the cache entries: source, tokens, size, complete or not
    chatsmith data clean KEY... | --all          remove cache entries
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data import ensure_corpus
from stages.data.sources import DataError


def add_parser(subparsers) -> None:
    """`chatsmith data tokenize|ls|clean`."""
    data = subparsers.add_parser("data", help="token shards of the pretraining text: tokenize, ls, clean")
    sub = data.add_subparsers(dest="data_command", required=True)
    tokenize = sub.add_parser("tokenize", help="the recipe's pretraining text -> cached token shards (pretrain does it when missing)")
    tokenize.add_argument("recipe")
    tokenize.add_argument("--out", default=None, help="run directory (its tokenizer; default runs/<recipe name>)")
    tokenize.add_argument("overrides", nargs="*")
    listing = sub.add_parser("ls", help="the cache entries: source, tokens, size, complete or not")
    listing.add_argument("--cache-dir", default=None)
    clean = sub.add_parser("clean", help="remove cache entries (by key or key prefix; --all for every one)")
    clean.add_argument("keys", nargs="*")
    clean.add_argument("--all", action="store_true")
    clean.add_argument("--cache-dir", default=None)


def data_command(args, recipe=None, out_dir: str | None = None) -> int:
    from stages.data import cache_entries, default_cache_dir, remove_cache_entries

    if args.data_command == "tokenize":
        from pipeline.runner import Run

        run = Run(recipe, out_dir)
        run.prepare(only="pretrain")
        print(f"corpus: {ensure_corpus(run)}")
        return 0
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.data_command == "ls":
        rows = cache_entries(cache_dir)
        print(f"{cache_dir}: {len(rows)} entries")
        for row in rows:
            state = "complete" if row["complete"] else f"{row['parts_done']}/{row['parts']} parts"
            tokens = f"{row['tokens']:,} tokens" if row["tokens"] is not None else "-"
            print(f"  {row['key']}  {row['label']}  {tokens}  {row['bytes_on_disk'] / 1e6:,.1f} MB  {state}  {row['created']}")
        return 0
    if not args.keys and not args.all:
        raise DataError("chatsmith data clean: name entries (keys or key prefixes from `chatsmith data ls`) or pass --all")
    removed = remove_cache_entries(cache_dir, None if args.all else args.keys)
    print(f"removed {len(removed)} entries from {cache_dir}")
    return 0
