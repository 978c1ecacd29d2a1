"""`chatsmith labels ...`: ingest, stats, build, tasks, push, pull. See labeling/README.md.

The console script `chatsmith` dispatches `chatsmith labels ARGS...` to `main(ARGS)`. Imports are
lazy so `--help` stays fast. Exit codes, each failure one line `chatsmith labels: error: ...`:
  0  done;
  1  an ingest that accepted nothing (empty file, LFS pointer, binary data, another format, only
     bad records): the line says why, and `looks like a X export; use --format X` when another
     reader would accept the file;
  2  a usage mistake (unreadable file, unknown format, bad option, a value out of range), or a
     Label Studio server, token or project that cannot be used (push, pull).
"""

from __future__ import annotations

import argparse
import json
import sys

PROG = "chatsmith labels"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors also return 2, as one line
        raise _UserError(message)


class _UserError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    from labeling.readers import FORMATS  # the readers' table (plain Python: cheap to import)

    parser = _Parser(prog=PROG, description="Human labeling data: ingest exports, check quality, build datasets, make tasks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("ingest", help="validate a labeler export; write accepted/rejected JSONL and summary.json")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("--format", required=True, choices=FORMATS, metavar="FMT", help="one of: " + ", ".join(FORMATS))
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tasks", metavar="TASKS_JSONL", help="label-studio: match annotations to this tasks.jsonl by task id")
    p.add_argument("--hh-demonstrations", action="store_true",
                   help="hh-rlhf: also take each chosen transcript as a demonstration (its replies were written by models)")

    p = sub.add_parser("stats", help="agreement, gold accuracy, ties, position/length bias, time outliers; "
                                     "per-labeler screening (controls, peer agreement) with flags")
    p.add_argument("dir", metavar="DIR", nargs="+", help="ingest output directories (figured together)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    _screen_flags(p)

    p = sub.add_parser("build", help="pairwise comparisons (TRL) and SFT conversations from every source, split by prompt")
    p.add_argument("dir", metavar="DIR", nargs="*", help="ingest output directories (combined)")
    p.add_argument("--out", required=True, metavar="DATA")
    p.add_argument("--sft", action="append", default=[], metavar="FILE", help="also: SFT conversations {messages} (repeatable)")
    p.add_argument("--comparisons", action="append", default=[], metavar="FILE",
                   help="also: comparisons {prompt, chosen, rejected} (repeatable)")
    p.add_argument("--sft-eval", action="append", default=[], metavar="FILE", help="held-out SFT conversations (repeatable)")
    p.add_argument("--comparisons-eval", action="append", default=[], metavar="FILE", help="held-out comparisons (repeatable)")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    _screen_flags(p)
    p.add_argument("--exclude-flagged", action="store_true", default=None,
                   help="leave flagged labelers' judgments out of training (kept in DATA/excluded.jsonl with the reason)")

    p = sub.add_parser("tasks", help="tasks for labelers: comparisons (K sampled replies), demonstrations, rewrites",
                       usage=f"{PROG} tasks CHECKPOINT PROMPTS --k K --out DIR | --kind demonstration PROMPTS --out DIR | "
                             "--kind rewrite ANSWERS [--worst N] --out DIR | --from-eval RUN [--stage S] --worst N --out DIR")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="comparison: CHECKPOINT PROMPTS; demonstration: PROMPTS (JSONL with `prompt` or `messages`, or one "
                        "prompt a line); rewrite: ANSWERS (JSONL {prompt, answer|greedy, reward|score?, flags?})")
    p.add_argument("--kind", choices=("comparison", "demonstration", "rewrite"), default=None,
                   help="what labelers do: rank K replies (default), write the reply, or rewrite a bad reply")
    p.add_argument("--from-eval", metavar="RUN", help="rewrite tasks from RUN/STAGE/eval_answers.jsonl (needs scores)")
    p.add_argument("--stage", metavar="STAGE", help="--from-eval: which stage's answers (default: ppo, else sft)")
    p.add_argument("--judge", default="reward", metavar="NAME",
                   help="--from-eval: whose verdicts rank the answers (default: reward, the run's reward model; gold on the demo)")
    p.add_argument("--worst", type=int, metavar="N", help="rewrite: only the N lowest-scored answers")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--controls", metavar="FILE", help="comparison: control tasks with a known answer to mix in "
                   "(JSONL; see labeling/README.md); the answer stays in tasks.jsonl")
    p.add_argument("--control-rate", type=float, metavar="R", help="share of the batch that is controls (default 0.05)")
    _label_studio_parsers(sub)
    return parser


def _label_studio_parsers(sub) -> None:
    """push / pull: a Label Studio server through its API (labeling.label_studio_api; the label-studio-sdk extra)."""
    p = sub.add_parser("push", help="import a tasks dir into a Label Studio project (created or reused by title)")
    p.add_argument("tasks_dir", metavar="TASKS_DIR", help="written by `labels tasks` or the arena's --judge human")
    p.add_argument("--label-studio", required=True, metavar="URL", help="the server, e.g. http://localhost:8080")
    p.add_argument("--project", metavar="NAME", help="project title (default: chatsmith KIND: DIR NAME)")
    p = sub.add_parser("pull", help="export a Label Studio project through the API and ingest it (as `ingest --format label-studio`)")
    p.add_argument("--label-studio", required=True, metavar="URL", help="the server, e.g. http://localhost:8080")
    p.add_argument("--project", required=True, metavar="ID", help="the project id `push` printed")
    p.add_argument("--out", required=True, metavar="DIR", help="writes label_studio_export.json and the ingest files here")
    p.add_argument("--tasks", metavar="TASKS", help="the tasks.jsonl (or tasks dir) pushed: match annotations to it by task id")


def _screen_flags(p) -> None:
    """The screening thresholds (labeling.screening.ScreenConfig; default: the type's)."""
    p.add_argument("--min-control-accuracy", type=float, metavar="X",
                   help="flag a labeler whose control accuracy is below X (95%% upper end; default 0.8)")
    p.add_argument("--min-peer-agreement", type=float, metavar="X",
                   help="flag a labeler whose agreement with the others' majority is below X (95%% upper end; default 0.6)")
    p.add_argument("--min-controls", type=int, metavar="N", help="fewer controls: not flagged on control accuracy (default 10)")
    p.add_argument("--min-shared-tasks", type=int, metavar="N",
                   help="fewer tasks shared with others: not flagged on peer agreement (default 10)")


def _screen_config(args):
    from pydantic import ValidationError

    from labeling.screening import ScreenConfig

    given = {name: getattr(args, name, None) for name in ScreenConfig.model_fields}
    try:
        return ScreenConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = str(first["loc"][0])
        raise _UserError(f"--{name.replace('_', '-')} {given[name]}: {first['msg']}") from None


def _run(args) -> int:
    if args.command == "ingest":
        from labeling.ingest import ingest

        summary = ingest(args.format, args.input, args.out, tasks_path=args.tasks, hh_demonstrations=args.hh_demonstrations)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
        print(f"read {summary['read']}  accepted {summary['accepted']}  rejected {summary['rejected']}  ({reasons})")
        print(f"wrote {args.out}/accepted.jsonl, rejected.jsonl, summary.json")
    elif args.command == "stats":
        from labeling import screening
        from labeling.stats import format_table, stats

        config = _screen_config(args)
        figures = stats(args.dir)
        screened = screening.screen(args.dir, config)
        figures["screening"] = screened.to_dict()
        print(format_table(figures))
        print()
        print(screening.format_table(screened))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(figures, handle, indent=2)
                handle.write("\n")
    elif args.command == "build":
        from labeling.build import build

        from labeling.build import build, format_table

        if not (args.dir or args.sft or args.comparisons or args.sft_eval or args.comparisons_eval):
            raise _UserError("build: give ingest directories (DIR ...) or training files (--sft, --comparisons)")
        if args.exclude_flagged and not args.dir:
            raise _UserError("build: --exclude-flagged screens the labelers of ingest directories (DIR ...); none given")
        config = _screen_config(args)  # the labelers of the ingest dirs are screened (flags reported) whatever the flags
        summary = build(args.dir, args.out, eval_fraction=args.eval_fraction, seed=args.seed, sft_files=args.sft,
                        comparison_files=args.comparisons, sft_eval_files=args.sft_eval, comparison_eval_files=args.comparisons_eval,
                        screening=config if args.dir else None)
        print(format_table(summary))
        print(f"wrote {args.out}")
    elif args.command == "tasks":
        _tasks(args)
    elif args.command in ("push", "pull"):
        _label_studio(args)
    return 0


def _label_studio(args) -> None:
    from labeling import label_studio_api as ls

    if args.command == "push":
        got = ls.push(args.tasks_dir, args.label_studio, args.project)
        state = "created" if got["created"] else "reused"
        print(f"project {got['project_id']} ({got['title']!r}, {got['kind']} tasks, {state}): imported {got['imported']} "
              f"of {got['tasks']} tasks ({got['already']} already there)")
        print(f"label at {got['project_url']}")
        print(f"then: chatsmith labels pull --label-studio {got['url']} --project {got['project_id']} --out DIR "
              f"--tasks {got['tasks_dir']}/tasks.jsonl")
    else:
        summary = ls.pull(args.label_studio, args.project, args.out, tasks_path=args.tasks)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
        print(f"project {summary['project_id']} ({summary['kind']} tasks): read {summary['read']}  accepted "
              f"{summary['accepted']}  rejected {summary['rejected']}  ({reasons})")
        print(f"wrote {summary['export']}, {args.out}/accepted.jsonl, rejected.jsonl, summary.json")


def _tasks(args) -> None:
    kind = args.kind or ("rewrite" if args.from_eval else "comparison")
    wanted = {"comparison": 2, "demonstration": 1, "rewrite": 0 if args.from_eval else 1}[kind]
    if args.from_eval and kind != "rewrite":
        raise _UserError("tasks: --from-eval makes rewrite tasks (drop --kind or use --kind rewrite)")
    if len(args.inputs) != wanted:
        expected = {"comparison": "CHECKPOINT PROMPTS", "demonstration": "PROMPTS",
                    "rewrite": "no INPUT with --from-eval" if args.from_eval else "ANSWERS"}[kind]
        raise _UserError(f"tasks --kind {kind}: expected {expected}, got {len(args.inputs)} input(s)")
    if (args.worst is not None or args.stage) and kind != "rewrite":
        raise _UserError("tasks: --worst and --stage apply to rewrite tasks")
    if args.stage and not args.from_eval:
        raise _UserError("tasks: --stage applies with --from-eval")
    if (args.controls or args.control_rate is not None) and kind != "comparison":
        raise _UserError("tasks: --controls and --control-rate apply to comparison tasks")
    if args.control_rate is not None and not args.controls:
        raise _UserError("tasks: --control-rate needs --controls FILE")
    if args.control_rate is not None and not 0 <= args.control_rate < 1:
        raise _UserError(f"tasks: --control-rate must be in [0, 1), got {args.control_rate}")
    from labeling import tasks

    files = f"{args.out}/tasks.jsonl, label_studio_import.json, label_studio_config.xml"
    if kind == "comparison":
        checkpoint, prompts = args.inputs
        summary = tasks.sample_tasks(checkpoint, prompts, args.out, k=args.k, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, seed=args.seed, controls=args.controls,
                                     control_rate=args.control_rate)
        print(f"{summary['tasks']} tasks from {summary['prompts']} prompts ({summary['skipped_prompts']} skipped: fewer than 2 distinct replies)")
        if args.controls:
            c = summary["control_counts"]
            short = (f"; only {c['controls']} of the {c['controls_wanted']} wanted: the file has {c['controls_available']} "
                     f"({c['controls_wrong_size']} with a candidate count no task has); write more controls"
                     if c["controls"] < c["controls_wanted"] else "")
            print(f"{c['controls']} of them are controls (rate {c['control_rate']:g}; known answers in tasks.jsonl only){short}")
    elif kind == "demonstration":
        summary = tasks.demonstration_tasks(args.inputs[0], args.out)
        print(f"{summary['tasks']} demonstration tasks")
    else:
        if args.from_eval:
            summary = tasks.tasks_from_eval(args.from_eval, args.out, worst=args.worst, stage=args.stage, judge=args.judge)
        else:
            summary = tasks.rewrite_tasks(tasks.read_answers(args.inputs[0]), args.out, worst=args.worst, where=args.inputs[0])
        skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items() if v) or "none"
        print(f"{summary['tasks']} rewrite tasks from the {summary['picked']} worst of {summary['answers']} answers (left out: {skipped})")
    print(f"wrote {files}")


def _say_error(err: Exception) -> None:
    # always one line, whatever the exception's own text looks like (pydantic's spans several)
    print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except _UserError as err:
        _say_error(err)
        return 2
    except (OSError, ValueError) as err:
        # a file the user named cannot be read or written, or a value (eval fraction, k, a prompts
        # line) is out of range; bad records inside an export never get here, ingest quarantines them
        _say_error(err)
        return 2
    except Exception as err:
        from labeling.ingest import NothingAccepted
        from labeling.readers import InputError

        if isinstance(err, InputError):
            _say_error(err)
            return 1 if isinstance(err, NothingAccepted) else 2
        raise

if __name__ == "__main__":
    sys.exit(main())
