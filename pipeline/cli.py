"""`chatsmith`: the one entry point.

    chatsmith run RECIPE [--out DIR] [key=value ...]          all stages in order (skips done ones, resumes a cut one)
    chatsmith stage NAME RECIPE [--out DIR] [key=value ...]   one stage: pretrain | sft | reward | ppo
    chatsmith check RECIPE [key=value ...]                    preflight: every problem at once, nothing written
    chatsmith plan RECIPE [--gpu A100-80GB --mfu 0.4] [key=value ...]   cost per stage before a cluster job
    chatsmith labels {ingest,stats,build,tasks} ...           the human-data side (see labeling/README.md)
    chatsmith chat CHECKPOINT [--temperature ...]             interactive, streaming, multi-turn
    chatsmith data tokenize RECIPE | ls | clean KEY...          token shards of the pretraining text (a cache reused by runs)
    chatsmith arena CHECKPOINT... --judge reward:DIR|gold|human  pairwise battles -> Bradley-Terry ratings with CIs

Heavy imports (torch, transformers) happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    from pipeline.registry import STAGE_ORDER  # pydantic config types only: `--help` stays fast

    parser = argparse.ArgumentParser(prog="chatsmith", description="From raw text to an aligned assistant.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every stage of a recipe in order")
    run.add_argument("recipe")
    run.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    run.add_argument("--seeds", default=None, metavar="0,1,2",
                     help="run once per seed into OUT/seed-N, then write OUT/seeds.json and OUT/seeds.md (mean, spread, CIs)")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stages.ppo.kl_coef=0.05")

    stage = sub.add_parser("stage", help="run one stage of a recipe")
    stage.add_argument("name", choices=STAGE_ORDER)
    stage.add_argument("recipe")
    stage.add_argument("--out", default=None)
    stage.add_argument("--force", action="store_true", help="run even if the manifest says the stage is done")
    stage.add_argument("overrides", nargs="*")

    check = sub.add_parser("check", help="preflight: every problem of a recipe at once, one line each; exit 2; nothing written")
    check.add_argument("recipe")
    check.add_argument("--out", default=None, help="the run directory it would write (default: runs/<recipe name>)")
    check.add_argument("overrides", nargs="*")

    plan = sub.add_parser("plan", help="parameters, memory per GPU, tokens and time of each stage, before you submit")
    plan.add_argument("recipe")
    plan.add_argument("--gpu", default="A100-80GB", help="A100-40GB, A100-80GB, H100-80GB, H200-141GB, L40S-48GB")
    plan.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. launch.config=zero3")

    sub.add_parser("labels", help="ingest, stats, build, tasks (chatsmith labels --help)", add_help=False)
    from pipeline.data_command import add_parser as add_data_parser

    add_data_parser(sub)
    sub.add_parser("arena", help="pairwise battles between checkpoints -> Bradley-Terry ratings with 95%% CIs "
                                 "(chatsmith arena --help)", add_help=False)

    chat = sub.add_parser("chat", help="talk to a checkpoint")
    chat.add_argument("checkpoint")
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-p", type=float, default=0.95)
    chat.add_argument("--top-k", type=int, default=0)
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    chat.add_argument("--system", default=None, help="a system message to start the conversation with")
    chat.add_argument("--seed", type=int, default=None)
    return parser


def _out_dir(args, recipe) -> str:
    return args.out or os.path.join("runs", recipe.name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "labels":
        from labeling.cli import main as labels_main

        return labels_main(argv[1:])
    if argv and argv[0] == "arena":
        from pipeline.eval.arena.cli import main as arena_main

        return arena_main(argv[1:])
    parser = _parser()
    # Overrides may come before or after options (`stage sft R --out D k=v` and `stage sft R k=v --out D`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("run", "stage", "plan", "data", "check") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.command == "chat":
        from pipeline.chat import repl

        return repl(args)
    if args.command == "data" and args.data_command != "tokenize":
        return _data(args)

    from pipeline.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 2
    if getattr(args, "seeds", None):
        return _run_seeds(args, recipe)
    if args.command == "data":
        return _data(args, recipe)
    if args.command in ("check", "run", "stage"):
        code = _preflight(args, recipe)
        if code or args.command == "check":
            return code
    if args.command == "plan":
        from pipeline.plan import main as plan_main

        return plan_main(args, recipe)
    from pipeline.launch import run_command

    return run_command(args, recipe, _out_dir(args, recipe))


def _preflight(args, recipe) -> int:
    """Every problem at once, one line each naming the key and the path; 2 when there is any."""
    import os

    from pipeline.launch import LAUNCHED_ENV
    from pipeline.preflight import check

    if os.environ.get(LAUNCHED_ENV):
        return 0  # a launched stage process: its parent checked
    problems, warnings = check(recipe, _out_dir(args, recipe), only=getattr(args, "name", None))
    for warning in warnings:
        print(f"chatsmith: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"chatsmith: error: {problem.line()}", file=sys.stderr)
    if args.command == "check" and not problems:
        print(f"{args.recipe}: no problems found")
    return 2 if problems else 0


def _data(args, recipe=None) -> int:
    from pipeline.data_command import data_command
    from stages.data.sources import DataError

    try:
        return data_command(args, recipe, _out_dir(args, recipe) if recipe is not None else None)
    except DataError as error:
        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 2


def _run_seeds(args, recipe) -> int:
    """`chatsmith run RECIPE --seeds 0,1,2`: each seed a whole run in OUT/seed-N, then the table over seeds."""
    from pathlib import Path

    from pipeline.launch import run_command
    from pipeline.recipe import load_recipe
    from pipeline.seeds import parse_seeds, seed_dir, summarise

    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 2
    out = Path(_out_dir(args, recipe))
    for seed in seeds:
        print(f"=== seed {seed}: {seed_dir(out, seed)}", flush=True)
        code = run_command(args, load_recipe(args.recipe, [*args.overrides, f"seed={seed}"]), str(seed_dir(out, seed)))
        if code != 0:
            return code
    summarise(out, seeds)
    print(f"\n{(out / 'seeds.md').read_text()}\nseeds: {out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
