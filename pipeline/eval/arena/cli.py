"""`chatsmith arena`: rate checkpoints against each other (see `pipeline.eval.arena`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from pipeline.eval.arena import ArenaError
from pipeline.eval.arena.battles import CHAT_TEMPERATURE, CHAT_TOP_P, generate_answers, prompt_id
from pipeline.eval.arena.human import export_human_tasks, ingest_human
from pipeline.eval.arena.results import ROUNDS, arena_from_answers, ratings_markdown, write_results
from pipeline.eval.judges import Judge, JudgeError, PairwiseJudge, RewardModelJudge
from stages.common import prompt_messages, read_jsonl

DESCRIPTION = "Pairwise battles between checkpoints on held-out prompts -> Bradley-Terry ratings with 95% CIs."
JudgeOfRun = Callable[[Path], "Judge | None"]


def data_source_judge(run_dir: Path) -> Judge | None:
    """The judge of a run directory's data source (`pipeline.registry.data_source`): the demo's gold judge, or None."""
    from pipeline.recipe import RecipeError, load_recipe
    from pipeline.registry import data_source
    from pipeline.runner import Run

    try:
        recipe = load_recipe(Path(run_dir) / "recipe.yaml")
    except RecipeError as error:
        raise ArenaError(f"--judge gold needs a demo run directory: {error}") from None
    return data_source(Run(recipe, run_dir)).arena_judge()


def checkpoint_names(paths: Sequence[str | Path]) -> list[str]:
    """A checkpoint inside a run directory (beside its manifest.json) is named by its stage dir
    (`RUN/sft` -> `sft`); any other by its path. Two runs' `sft` become `RUN_NAME/sft`."""
    def short(path: Path) -> str:
        resolved = path.resolve()
        return resolved.name if (resolved.parent / "manifest.json").exists() else str(path)

    paths = [Path(p) for p in paths]
    names = [short(p) for p in paths]
    clashes = {name for name in names if names.count(name) > 1}
    names = [f"{p.resolve().parent.name}/{name}" if name in clashes and name == p.resolve().name else name
             for p, name in zip(paths, names)]
    if len(set(names)) != len(names):
        raise ArenaError(f"the same checkpoint is named twice: {[str(p) for p in paths]}")
    return names


def _run_dir_of(paths: Sequence[Path]) -> Path | None:
    parents = {p.resolve().parent for p in paths if (p.resolve().parent / "manifest.json").exists()}
    return parents.pop() if len(parents) == 1 else None


def _judge(spec: str, *, run_dir: Path, margin: float, batch_size: int, judge_of_run: JudgeOfRun) -> PairwiseJudge:
    if spec == "gold":
        judge = judge_of_run(run_dir)
        if judge is None:
            raise ArenaError(f"--judge gold is the demo world's judge; {run_dir} is not a demo run (use --judge reward:DIR)")
        return PairwiseJudge(judge, margin=margin, name="gold")
    if spec.startswith("reward:") and spec != "reward:":
        try:
            return PairwiseJudge(RewardModelJudge(spec.removeprefix("reward:"), batch_size=batch_size), margin=margin, name=spec)
        except JudgeError as error:
            raise ArenaError(str(error)) from None
    raise ArenaError(f"--judge is reward:DIR, gold or human, not {spec!r}")


def _test_prompts(run_dir: Path) -> list[dict]:
    """The test rows of the run's held-out prompts (`pipeline.eval.stats.split_of`): never tuned on."""
    from pipeline.eval.stats import split_of

    path = run_dir / "data" / "eval_prompts.jsonl"
    if not path.exists():
        raise ArenaError("--prompts PROMPTS_JSONL is needed (no held-out prompts in DIR/data)")
    rows = [r for r in _prompts(path) if split_of(r) == "test"]
    if not rows:
        raise ArenaError(f"{path}: no test prompts (rows with split: test, or without a split and hashed to test)")
    return rows


def _prompts(path: Path) -> list[dict]:
    if not path.exists():
        raise ArenaError(f"{path}: no such prompts file")
    rows = read_jsonl(path)
    if not rows:
        raise ArenaError(f"{path}: no prompts")
    for i, row in enumerate(rows):
        try:
            prompt_messages(row)
        except KeyError:
            raise ArenaError(f"{path}:{i + 1}: a prompt needs `prompt` or `messages`") from None
    ids = [prompt_id(r, i) for i, r in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise ArenaError(f"{path}: two prompts have the same id")
    return rows


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="two or more checkpoint dirs")
    parser.add_argument("--judge", default=None, metavar="JUDGE", help="reward:DIR (a reward model), gold (the demo's judge) or human")
    parser.add_argument("--prompts", default=None, metavar="PROMPTS_JSONL",
                        help="held-out prompts (default: the test rows of DIR/data/eval_prompts.jsonl)")
    parser.add_argument("--out", default=None, metavar="DIR", help="writes DIR/arena/ (default: the checkpoints' run directory)")
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt and checkpoint (default 2)")
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=CHAT_TOP_P)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"bootstrap rounds (default {ROUNDS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie-margin", type=float, default=0.0, help="a tie when the judge's two scores differ by less")
    parser.add_argument("--ingest", nargs="?", const="", default=None, metavar="EXPORT",
                        help="ratings from the labelers' Label Studio export (a file, or with --label-studio, the server's)")
    parser.add_argument("--label-studio", default=None, metavar="URL",
                        help="--judge human: push the battles to this Label Studio server; --ingest: pull the verdicts from it "
                             "(token in $LABEL_STUDIO_API_KEY; needs the label-studio extra)")
    parser.add_argument("--project", default=None, metavar="NAME_OR_ID",
                        help="with --label-studio: the project's title to push into, or its id to pull from (default: the one "
                             "the push recorded)")


def run(args: argparse.Namespace, *, say: Callable[[str], None] = print, judge_of_run: JudgeOfRun = data_source_judge) -> int:
    """`chatsmith arena` with parsed arguments. `judge_of_run(run_dir)`: the judge a run directory's data source
    has (the demo's gold judge), for `--judge gold`."""
    checkpoints = [Path(p) for p in args.checkpoints]
    out = Path(args.out) if args.out else _run_dir_of(checkpoints)
    if out is None:
        raise ArenaError("--out DIR is needed (the checkpoints are not all in one run directory)")
    if args.ingest is not None:
        export = _pulled(out, args) if args.label_studio else args.ingest
        if not export:
            raise ArenaError("--ingest needs the export file, or --label-studio URL to pull it")
        battles, summary = ingest_human(export, out)
        say(f"arena: ingest read {summary['read']}, accepted {summary['accepted']}, rejected {summary['rejected']}")
        ratings = write_results(battles, out, rounds=args.rounds, seed=args.seed, meta={"judge": "human", "export": str(export)})
        say(ratings_markdown(ratings))
        return 0
    if len(checkpoints) < 2:
        raise ArenaError("the arena needs at least two checkpoints")
    missing = [str(p) for p in checkpoints if not (p / "config.json").exists()]
    if missing:
        raise ArenaError(f"not checkpoint directories: {', '.join(missing)}")
    if args.judge is None:
        raise ArenaError("--judge is needed: reward:DIR, gold or human")
    if args.samples < 1 or args.rounds < 1:
        raise ArenaError("--samples and --rounds must be at least 1")
    rows = _prompts(Path(args.prompts)) if args.prompts else _test_prompts(out)
    names = checkpoint_names(checkpoints)
    judge = None if args.judge == "human" else _judge(args.judge, run_dir=out, margin=args.tie_margin,
                                                        batch_size=args.batch_size, judge_of_run=judge_of_run)
    answers = generate_answers(dict(zip(names, checkpoints)), rows, samples=args.samples, temperature=args.temperature,
                               top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                               seed=args.seed, say=say)
    if judge is None:
        exported = export_human_tasks(answers, rows, out)
        say(f"arena: {exported['tasks']} Label Studio tasks in {exported['dir']}/tasks "
            f"({exported['auto_battles']} battles decided without a labeler: identical or empty answers)")
        if args.label_studio:
            pushed = _pushed(out, args)
            say(f"arena: Label Studio project {pushed['project_id']}: {pushed['project_url']} ({pushed['imported']} tasks imported, "
                f"{pushed['already']} already there); then chatsmith arena --ingest --label-studio {args.label_studio} --out {out}")
        else:
            say(f"arena: import label_studio_import.json with label_studio_config.xml; then chatsmith arena --ingest EXPORT --out {out}")
        return 0
    ratings = arena_from_answers(answers, rows, judge, out, rounds=args.rounds, seed=args.seed, judge_name=args.judge)
    say(ratings_markdown(ratings))
    say(f"arena: wrote {out / 'arena' / 'ratings.json'}")
    return 0


def _pushed(out: Path, args) -> dict:
    from labeling.label_studio_api import LabelStudioError, push_arena

    try:
        return push_arena(out, args.label_studio, args.project)
    except LabelStudioError as error:
        raise ArenaError(str(error)) from None


def _pulled(out: Path, args) -> Path:
    from labeling.label_studio_api import LabelStudioError, pull_arena

    try:
        return pull_arena(out, args.label_studio, args.project)
    except LabelStudioError as error:
        raise ArenaError(str(error)) from None


def main(argv: Sequence[str] | None = None, *, judge_of_run: JudgeOfRun = data_source_judge) -> int:
    parser = argparse.ArgumentParser(prog="chatsmith arena", description=DESCRIPTION)
    _arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args, judge_of_run=judge_of_run)
    except ArenaError as error:
        print(f"chatsmith arena: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
