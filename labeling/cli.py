"""`chatsmith labels ...`: ingest, stats, build, tasks. See labeling/README.md.

The console script `chatsmith` dispatches `chatsmith labels ARGS...` to `main(ARGS)`. Imports are
lazy so `--help` stays fast; a mistake the user made (unreadable file, wrong format) prints one
line `chatsmith labels: error: ...` and returns 2.
"""

from __future__ import annotations

import argparse
import json
import sys

PROG = "chatsmith labels"
FORMATS = ("native", "hh-rlhf", "oasst", "label-studio", "argilla")  # = labeling.readers.FORMATS (checked by a test)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors also return 2, as one line
        raise _UserError(message)


class _UserError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Human labeling data: ingest exports, check quality, build datasets, make tasks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("ingest", help="validate a labeler export; write accepted/rejected JSONL and summary.json")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("--format", required=True, choices=FORMATS, metavar="FMT", help="one of: " + ", ".join(FORMATS))
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tasks", metavar="TASKS_JSONL", help="label-studio: match annotations to this tasks.jsonl by task id")

    p = sub.add_parser("stats", help="agreement, gold accuracy, ties, position/length bias, time outliers")
    p.add_argument("dir", metavar="DIR", help="an ingest output directory")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")

    p = sub.add_parser("build", help="pairwise comparisons (TRL) and SFT conversations, split by prompt")
    p.add_argument("dir", metavar="DIR", nargs="+", help="ingest output directories")
    p.add_argument("--out", required=True, metavar="DATA")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("tasks", help="sample K replies per prompt from a checkpoint; write comparison tasks")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("prompts", metavar="PROMPTS", help="JSONL with `prompt` or `messages`, or a text file (one prompt a line)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return parser


def _run(args) -> int:
    if args.command == "ingest":
        from labeling.ingest import ingest

        summary = ingest(args.format, args.input, args.out, tasks_path=args.tasks)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
        print(f"read {summary['read']}  accepted {summary['accepted']}  rejected {summary['rejected']}  ({reasons})")
        print(f"wrote {args.out}/accepted.jsonl, rejected.jsonl, summary.json")
    elif args.command == "stats":
        from labeling.stats import format_table, stats

        figures = stats(args.dir)
        print(format_table(figures))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(figures, handle, indent=2)
                handle.write("\n")
    elif args.command == "build":
        from labeling.build import build

        summary = build(args.dir if len(args.dir) > 1 else args.dir[0], args.out, eval_fraction=args.eval_fraction, seed=args.seed)
        print(" ".join(f"{k} {summary[k]}" for k in ("comparisons_train", "comparisons_eval", "sft_train", "sft_eval", "tied_pairs_dropped")))
        print(f"wrote {args.out}")
    elif args.command == "tasks":
        from labeling.tasks import sample_tasks

        summary = sample_tasks(args.checkpoint, args.prompts, args.out, k=args.k, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed)
        print(f"{summary['tasks']} tasks from {summary['prompts']} prompts ({summary['skipped_prompts']} skipped: fewer than 2 distinct replies)")
        print(f"wrote {args.out}/tasks.jsonl, label_studio_import.json, label_studio_config.xml")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except _UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        # a file the user named cannot be read or written, or a value (eval fraction, k, a prompts
        # line) is out of range; bad records inside an export never get here, ingest quarantines them
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from labeling.readers import InputError

        if isinstance(err, InputError):
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        raise

if __name__ == "__main__":
    sys.exit(main())
