"""The arena: every pair of checkpoints answers the same held-out prompts; a judge picks the better
answer (or a tie); Bradley–Terry ratings with bootstrap 95% intervals, as Chatbot Arena reports them.

    chatsmith arena RUN/pretrain RUN/sft RUN/ppo --judge gold --out RUN              # the demo
    chatsmith arena RUN/sft RUN/ppo OLD_RUN/ppo --judge reward:RUN/reward --prompts TEST.jsonl --out RUN
    chatsmith arena RUN/sft RUN/ppo --judge human --prompts TEST.jsonl --out RUN     # Label Studio tasks
    chatsmith arena --ingest EXPORT.json --out RUN                                   # ... and their verdicts

In:  checkpoints (a checkpoint `RUN/sft` inside a run directory is named by its stage, `sft`; any
     other by its path), held-out prompts (JSONL with `prompt` or `messages`, and `id`), a judge.
Out: DIR/arena/ratings.json  {checkpoint: {"rating": float, "ci95": [lo, hi]}}, best first;
     DIR/arena/battles.jsonl every verdict; DIR/arena/summary.json judge, counts, position bias;
     DIR/arena/answers.jsonl what each checkpoint answered; DIR/arena/ratings.png.

How (settled in the issue):
- each checkpoint samples `--samples` answers per prompt at the chat default (T=0.7, top-p 0.95),
  with the same seeds for every checkpoint; sample s of one checkpoint meets sample s of another;
- every battle is judged twice, positions swapped; ties are allowed and count half;
- ratings: Bradley–Terry by maximum likelihood on Chatbot Arena's scale (400 points = 10:1 odds,
  mean rating 1000); intervals: percentile bootstrap that resamples *prompts* — all battles of a
  drawn prompt come along, both orders included — so a position-blind judge's duplicate verdict
  adds no false precision (the battle-level bootstrap would shrink the interval by ~1/sqrt(2)).

Layers, each usable alone: `fit_bradley_terry` / `bootstrap_ratings` (pure numpy),
`play_battles` (answers + a judge callable -> battles), judges (`ScoreJudge` for a pointwise scorer
such as the demo's gold judge, which the caller hands in: the arena does not import the demo;
`RewardModelJudge`), the human path (`export_human_tasks` /
`ingest_human`), and `arena_from_answers`, which the runner calls with the answers its evaluation
already generated. torch and transformers are imported only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from pipeline.bootstrap import cluster_codes, cluster_draws, percentile_interval
from stages.common import prompt_messages, read_jsonl, write_json_atomic, write_jsonl

SCALE, BASE, ANCHOR = 400.0, 10.0, 1000.0
L2 = 1e-4  # per unit of battle weight: finite ratings when one checkpoint wins everything (see _fit_theta)
VERDICTS = ("a", "b", "tie")
CHAT_TEMPERATURE, CHAT_TOP_P = 0.7, 0.95


class ArenaError(ValueError):
    """A user error (bad checkpoint list, judge spec, prompts file): one line at the CLI, exit 2."""


@dataclass(frozen=True)
class Battle:
    """One verdict: `model_a`'s answer was shown first. `winner` is "a", "b" or "tie"."""

    prompt_id: str
    model_a: str
    model_b: str
    winner: str
    sample: int = 0

    def __post_init__(self):
        if self.winner not in VERDICTS:
            raise ValueError(f"a verdict is one of {VERDICTS}, not {self.winner!r}")
        if self.model_a == self.model_b:
            raise ValueError(f"a battle needs two different checkpoints, got {self.model_a!r} twice")


def as_battle(battle: Battle | Mapping) -> Battle:
    if isinstance(battle, Battle):
        return battle
    return Battle(prompt_id=str(battle["prompt_id"]), model_a=battle["model_a"], model_b=battle["model_b"],
                  winner=battle["winner"], sample=int(battle.get("sample", 0)))


# ------------------------------------------------------------------------------ (a) Bradley–Terry


def _tallies(battles: list[Battle], by: str | Callable[[Battle], Hashable]):
    """Per resampling cluster p: N[p, i, j] battles between i and j, S[p, i, j] i's score against j
    (a win 1, a tie 1/2). The fit only needs these sums, so a bootstrap round is a weighted sum."""
    if not battles:
        raise ArenaError("no battles to rate")
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: k for k, m in enumerate(models)}
    if by == "prompt":
        keys = [b.prompt_id for b in battles]
    elif by == "battle":
        keys = None
    elif callable(by):
        keys = [by(b) for b in battles]
    else:
        raise ValueError(f"by is 'prompt', 'battle' or a function of a battle, not {by!r}")
    codes = cluster_codes(keys, len(battles))
    n_clusters = int(codes.max()) + 1
    count = np.zeros((n_clusters, len(models), len(models)))
    score = np.zeros_like(count)
    for code, b in zip(codes, battles):
        i, j = index[b.model_a], index[b.model_b]
        s = {"a": 1.0, "b": 0.0, "tie": 0.5}[b.winner]
        count[code, i, j] += 1.0
        count[code, j, i] += 1.0
        score[code, i, j] += s
        score[code, j, i] += 1.0 - s
    return models, count, score


def _objective(theta, count, score, total, l2):
    diff = theta[:, None] - theta[None, :]
    # each unordered pair appears twice in the ordered sum (i vs j and j vs i) with its own score
    log_likelihood = -(score * np.logaddexp(0.0, -diff)).sum() / total
    return log_likelihood - 0.5 * l2 * float(theta @ theta)


def _fit_theta(count: np.ndarray, score: np.ndarray, *, l2: float = L2, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Maximum-likelihood BT strengths (natural log-odds, mean zero) by damped Newton steps.

    The log-likelihood is divided by the number of battles and a small ridge `l2` added: the ridge
    keeps a checkpoint that wins (or loses) every battle at a finite rating, and, being per battle,
    counting every battle twice leaves the fit exactly as it was."""
    models = count.shape[0]
    total = count.sum() / 2.0
    if total <= 0:
        raise ArenaError("no battles to rate")
    theta = np.zeros(models)
    centring = np.full((models, models), 1.0 / models)  # pins the mean at 0 (the likelihood ignores it)
    current = _objective(theta, count, score, total, l2)
    for _ in range(max_iter):
        prob = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        gradient = (score - count * prob).sum(axis=1) / total - l2 * theta
        curvature = count * prob * (1.0 - prob) / total
        information = np.diag(curvature.sum(axis=1) + l2) - curvature
        try:
            step = np.linalg.solve(information + centring, gradient)
        except np.linalg.LinAlgError:
            raise ArenaError("the battles do not connect every checkpoint to the others") from None
        size = 1.0
        while size > 1e-8:
            candidate = theta + size * step
            value = _objective(candidate, count, score, total, l2)
            if value >= current - 1e-15:
                break
            size /= 2.0
        theta, current = candidate, value
        if np.max(np.abs(size * step)) < tol:
            break
    return theta - theta.mean()


def _to_elo(theta: np.ndarray, models: list[str], *, scale: float, base: float, anchor: float,
            anchor_model: str | None) -> np.ndarray:
    ratings = anchor + theta * scale / math.log(base)
    if anchor_model is not None:
        if anchor_model not in models:
            raise ArenaError(f"anchor checkpoint {anchor_model!r} played no battle")
        ratings = ratings + (anchor - ratings[..., [models.index(anchor_model)]])
    return ratings


def fit_bradley_terry(battles: Iterable[Battle | Mapping], *, scale: float = SCALE, base: float = BASE,
                      anchor: float = ANCHOR, anchor_model: str | None = None, l2: float = L2) -> dict[str, float]:
    """{checkpoint: rating}, best first. A rating gap of `scale` points means `base`:1 odds of winning;
    the mean rating is `anchor` (or `anchor_model` is pinned at `anchor`). Ties count half a win."""
    battles = [as_battle(b) for b in battles]
    models, count, score = _tallies(battles, lambda battle: 0)  # one cluster: the totals
    theta = _fit_theta(count[0], score[0], l2=l2)
    ratings = _to_elo(theta, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    return dict(sorted(zip(models, ratings.tolist()), key=lambda kv: -kv[1]))


def bootstrap_ratings(battles: Iterable[Battle | Mapping], *, by: str | Callable[[Battle], Hashable] = "prompt",
                      rounds: int = 100, seed: int = 0, scale: float = SCALE, base: float = BASE,
                      anchor: float = ANCHOR, anchor_model: str | None = None, l2: float = L2) -> dict[str, dict]:
    """{checkpoint: {"rating", "ci95": [lo, hi]}}, best first: the maximum-likelihood rating on all
    battles and a 95% percentile interval over `rounds` refits on resampled data.

    `by="prompt"` resamples prompts (every battle of a drawn prompt, both orders and every sample,
    comes along); `by="battle"` resamples single verdicts (Chatbot Arena's own choice, where each
    battle is a different user's prompt); or pass a function of a battle giving its cluster key."""
    battles = [as_battle(b) for b in battles]
    models, count, score = _tallies(battles, by)
    theta = _fit_theta(count.sum(axis=0), score.sum(axis=0), l2=l2)
    point = _to_elo(theta, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    draws = cluster_draws(count.shape[0], rounds=rounds, seed=seed).astype(np.float64)
    boot_count = np.einsum("rp,pij->rij", draws, count)
    boot_score = np.einsum("rp,pij->rij", draws, score)
    samples = np.stack([_fit_theta(c, s, l2=l2) for c, s in zip(boot_count, boot_score)])
    samples = _to_elo(samples, models, scale=scale, base=base, anchor=anchor, anchor_model=anchor_model)
    out = {}
    for k in np.argsort(-point, kind="stable"):
        lo, hi = percentile_interval(samples[:, k])
        out[models[k]] = {"rating": float(point[k]), "ci95": [lo, hi]}
    return out


def battle_stats(battles: Iterable[Battle | Mapping]) -> dict:
    """Counts per checkpoint, and the judge's position bias: how often the answer shown first wins a
    decisive verdict, and how often the two orders of the same battle agree."""
    battles = [as_battle(b) for b in battles]
    per_model: dict[str, dict[str, int]] = {}
    for b in battles:
        for model, side in ((b.model_a, "a"), (b.model_b, "b")):
            tally = per_model.setdefault(model, {"battles": 0, "wins": 0, "losses": 0, "ties": 0})
            tally["battles"] += 1
            tally["ties" if b.winner == "tie" else "wins" if b.winner == side else "losses"] += 1
    decisive = [b for b in battles if b.winner != "tie"]
    orders: dict[tuple, dict[str, str]] = {}
    for b in battles:
        key = (b.prompt_id, b.sample, *sorted((b.model_a, b.model_b)))
        # the verdict, said of the first model in name order: both orders of one battle are comparable
        first = sorted((b.model_a, b.model_b))[0]
        said = "tie" if b.winner == "tie" else ("first" if (b.winner == "a") == (b.model_a == first) else "second")
        orders.setdefault(key, {})[b.model_a] = said
    both = [v for v in orders.values() if len(v) == 2]
    agree = sum(len(set(v.values())) == 1 for v in both)
    return {
        "battles": len(battles),
        "prompts": len({b.prompt_id for b in battles}),
        "ties": sum(b.winner == "tie" for b in battles),
        "first_position_win_rate": (sum(b.winner == "a" for b in decisive) / len(decisive)) if decisive else None,
        "swapped_pairs": len(both),
        "swap_agreement": (agree / len(both)) if both else None,
        "per_checkpoint": dict(sorted(per_model.items())),
    }


# --------------------------------------------------------------------------------------- (b) battles


def prompt_id(row: Mapping, index: int) -> str:
    return str(row["id"]) if row.get("id") is not None else f"p{index}"


def _samples(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _verdict(value) -> str:
    verdict = str(value).lower()
    if verdict not in VERDICTS:
        raise ValueError(f"the judge said {value!r}; a verdict is one of {VERDICTS}")
    return verdict


def _pairings(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping]):
    """(prompt id, row, sample, model_a, model_b, answer_a, answer_b) for every pair of checkpoints,
    prompt and sample, in both orders."""
    names = list(answers)
    if len(names) < 2:
        raise ArenaError(f"the arena needs at least two checkpoints, got {names}")
    rows = {prompt_id(r, i): r for i, r in enumerate(prompt_rows)}
    ids = [pid for pid in rows if all(pid in answers[name] for name in names)]
    if not ids:
        raise ArenaError("no prompt was answered by every checkpoint")
    for pid in ids:
        for first, second in itertools.combinations(names, 2):
            mine, theirs = _samples(answers[first][pid]), _samples(answers[second][pid])
            for sample in range(min(len(mine), len(theirs))):
                yield pid, rows[pid], sample, first, second, mine[sample], theirs[sample]
                yield pid, rows[pid], sample, second, first, theirs[sample], mine[sample]


def play_battles(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                 judge: Callable[[Mapping, str, str], str]) -> list[Battle]:
    """Every pair of checkpoints on every prompt all of them answered, sample s against sample s,
    each judged in both orders.

    `answers`: {checkpoint: {prompt id: [sample 0, sample 1, ...]}}; `prompt_rows` give the prompts
    (their `id`, or `p<index>`); `judge(row, answer_a, answer_b)` -> "a" | "b" | "tie". A judge with
    a `prepare(items)` method is first handed every distinct (row, answer) so it can score in batches."""
    pairings = list(_pairings(answers, prompt_rows))
    if hasattr(judge, "prepare"):
        judge.prepare([(row, a) for _, row, _, _, _, a, _ in pairings])
    return [Battle(prompt_id=pid, model_a=model_a, model_b=model_b, winner=_verdict(judge(row, a, b)), sample=sample)
            for pid, row, sample, model_a, model_b, a, b in pairings]


# ---------------------------------------------------------------------------------------- (c) judges


def _row_key(row: Mapping) -> str:
    return json.dumps(prompt_messages(dict(row)), sort_keys=True, ensure_ascii=False)


class ScoreJudge:
    """Pairwise verdicts from a pointwise scorer `score_fn(rows, replies) -> list[float]` (the demo's
    gold judge; a reward model). Each distinct (prompt, answer) is scored once; the higher score
    wins, a tie when the scores are equal or closer than `margin`. Blind to position by construction."""

    def __init__(self, score_fn: Callable[[list[Mapping], list[str]], Sequence[float]], *, margin: float = 0.0,
                 name: str = "score"):
        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.score_fn, self.margin, self.name = score_fn, margin, name
        self.cache: dict[tuple[str, str], float] = {}
        self.scored = 0  # answers actually scored (each distinct (prompt, answer) once)

    def prepare(self, items: Iterable[tuple[Mapping, str]]) -> None:
        todo: dict[tuple[str, str], tuple[Mapping, str]] = {}
        for row, answer in items:
            key = (_row_key(row), answer)
            if key not in self.cache:
                todo.setdefault(key, (row, answer))
        if not todo:
            return
        rows, replies = [r for r, _ in todo.values()], [a for _, a in todo.values()]
        scores = list(self.score_fn(rows, replies))
        if len(scores) != len(replies):
            raise ValueError(f"the scorer returned {len(scores)} scores for {len(replies)} answers")
        self.cache.update(zip(todo, map(float, scores)))
        self.scored += len(replies)

    def score(self, row: Mapping, answer: str) -> float:
        key = (_row_key(row), answer)
        if key not in self.cache:
            self.prepare([(row, answer)])
        return self.cache[key]

    def __call__(self, row: Mapping, answer_a: str, answer_b: str) -> str:
        delta = self.score(row, answer_a) - self.score(row, answer_b)
        if delta == 0 or abs(delta) < self.margin:
            return "tie"
        return "a" if delta > 0 else "b"


class RewardModelJudge(ScoreJudge):
    """A reward-model checkpoint as the judge: its score of prompt + answer rendered with the
    checkpoint's own chat template (as the reward stage scores), batched, without gradients.
    A tie when the two scores differ by less than `margin` (in the model's raw score units)."""

    def __init__(self, reward_dir: str | Path, *, margin: float = 0.0, batch_size: int = 32,
                 trust_remote_code: bool = False):
        self.reward_dir = Path(reward_dir)
        if not (self.reward_dir / "config.json").exists():
            raise ArenaError(f"{self.reward_dir}: not a checkpoint directory (no config.json)")
        self.batch_size, self.trust_remote_code = batch_size, trust_remote_code
        self._model = self._tokenizer = None
        super().__init__(self._score, margin=margin, name=f"reward:{reward_dir}")

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSequenceClassification

            from stages.common import load_tokenizer

            self._tokenizer = load_tokenizer(self.reward_dir, where="arena judge", trust_remote_code=self.trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(str(self.reward_dir), trust_remote_code=self.trust_remote_code)
            if model.config.num_labels != 1:
                raise ArenaError(f"{self.reward_dir}: a reward model has num_labels=1, this one has {model.config.num_labels}")
            self._model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval().requires_grad_(False)
        return self._model, self._tokenizer

    def _score(self, rows: list[Mapping], replies: list[str]) -> list[float]:
        from stages.rlhf.reward import score

        model, tokenizer = self._load()
        conversations = [prompt_messages(dict(r)) + [{"role": "assistant", "content": a}] for r, a in zip(rows, replies)]
        return score(model, tokenizer, conversations, batch_size=self.batch_size)


# ----------------------------------------------------------------------------------------- (d) human

PAIRWISE_CONFIG = """<View>
  <Header value="The conversation so far"/>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
  <Header value="Which reply is better? Choose Tie when you cannot tell them apart."/>
  <List name="replies" value="$candidates" title="Replies"/>
  <Choices name="preference" toName="replies" choice="single" required="true" showInline="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="Tie"/>
  </Choices>
  <TextArea name="rationale" toName="replies" placeholder="Why? (optional)" rows="2"/>
</View>
"""


def _auto_verdict(answer_a: str, answer_b: str) -> str | None:
    """The verdict no labeler is asked for: identical answers tie, an empty answer loses
    (labeling's ingest would set such tasks aside as identical or empty replies)."""
    a, b = answer_a.strip(), answer_b.strip()
    if a == b:
        return "tie"
    if not a or not b:
        return "a" if a else "b"
    return None


def export_human_tasks(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                       out_dir: str | Path) -> dict:
    """Every battle (both orders) as a Label Studio pairwise task: reply A, reply B, a choice of
    A / B / Tie. Writes under `out_dir/arena/human/`: tasks/ (tasks.jsonl, label_studio_import.json,
    label_studio_config.xml), plan.jsonl (task id -> prompt, sample, checkpoints) and
    auto_battles.jsonl (verdicts no labeler is asked for: identical or empty answers)."""
    from labeling.tasks import write_tasks

    human = Path(out_dir) / "arena" / "human"
    tasks, plan, auto = [], [], []
    for pid, row, sample, model_a, model_b, a, b in _pairings(answers, prompt_rows):
        verdict = _auto_verdict(a, b)
        if verdict is not None:
            auto.append(asdict(Battle(pid, model_a, model_b, verdict, sample)))
            continue
        task_id = "arena-" + hashlib.sha256(json.dumps([pid, sample, model_a, model_b]).encode()).hexdigest()[:16]
        tasks.append({"task_id": task_id, "prompt": prompt_messages(dict(row)),
                      "candidates": [{"id": "a", "content": a, "model": model_a}, {"id": "b", "content": b, "model": model_b}]})
        plan.append({"task_id": task_id, "prompt_id": pid, "sample": sample, "model_a": model_a, "model_b": model_b})
    summary = write_tasks(tasks, human / "tasks") if tasks else {"tasks": 0, "paths": {}}
    if tasks:
        (human / "tasks" / "label_studio_config.xml").write_text(PAIRWISE_CONFIG, encoding="utf-8")
    write_jsonl(human / "plan.jsonl", plan)
    write_jsonl(human / "auto_battles.jsonl", auto)
    return {"tasks": len(tasks), "auto_battles": len(auto), "dir": str(human), "paths": summary["paths"]}


def ingest_human(export: str | Path, out_dir: str | Path) -> tuple[list[Battle], dict]:
    """The labelers' Label Studio export of `export_human_tasks`' tasks -> battles, through
    `labeling` ingest (validation, quarantine; into out_dir/arena/human/ingest). Every annotation is
    a verdict (several labelers on one task are several battles of that prompt); the automatic
    verdicts are added back. Returns (battles, the ingest summary)."""
    from labeling.ingest import ingest, read_records
    from labeling.readers import InputError

    human = Path(out_dir) / "arena" / "human"
    if not (human / "plan.jsonl").exists():
        raise ArenaError(f"{human}/plan.jsonl not found: export the tasks first (--judge human --out {out_dir})")
    plan = {row["task_id"]: row for row in read_jsonl(human / "plan.jsonl")}
    try:
        summary = ingest("label-studio", export, human / "ingest", tasks_path=human / "tasks" / "tasks.jsonl")
    except InputError as error:
        raise ArenaError(str(error)) from None
    battles = [as_battle(b) for b in read_jsonl(human / "auto_battles.jsonl")]
    for record in read_records(human / "ingest"):
        task = plan.get(record.task_id or "")
        if record.kind != "comparison" or task is None:
            continue
        model_of = {c.id: c.model for c in record.candidates}
        best = record.ranking[0]
        winner = "tie" if len(best) > 1 else ("a" if model_of[best[0]] == task["model_a"] else "b")
        battles.append(Battle(task["prompt_id"], task["model_a"], task["model_b"], winner, task["sample"]))
    return battles, summary


# ------------------------------------------------------------------------------------------ results


def write_results(battles: list[Battle], out_dir: str | Path, *, rounds: int = 100, seed: int = 0,
                  meta: Mapping | None = None, plot: bool = True) -> dict[str, dict]:
    """Fit and write DIR/arena/{ratings.json, battles.jsonl, summary.json, ratings.png}; return the ratings."""
    arena = Path(out_dir) / "arena"
    ratings = bootstrap_ratings(battles, by="prompt", rounds=rounds, seed=seed)
    ratings = {name: {"rating": round(r["rating"], 2), "ci95": [round(x, 2) for x in r["ci95"]]} for name, r in ratings.items()}
    write_jsonl(arena / "battles.jsonl", (asdict(b) for b in battles))
    write_json_atomic(arena / "ratings.json", ratings)
    write_json_atomic(arena / "summary.json", {**(meta or {}), "rounds": rounds, "seed": seed, "bootstrap": "by prompt",
                                               "scale": SCALE, "base": BASE, "anchor": f"mean {ANCHOR:g}",
                                               **battle_stats(battles)})
    if plot:
        plot_ratings(ratings, arena / "ratings.png")
    return ratings


def arena_from_answers(answers: Mapping[str, Mapping[str, Sequence[str] | str]], prompt_rows: Sequence[Mapping],
                       judge: Callable[[Mapping, str, str], str], out_dir: str | Path, *, rounds: int = 100,
                       seed: int = 0, judge_name: str | None = None, plot: bool = True) -> dict[str, dict]:
    """The arena on answers already generated (the runner's evaluation answers): battles, ratings,
    files under `out_dir/arena/`. Returns {checkpoint: {"rating", "ci95"}} as written to ratings.json."""
    battles = play_battles(answers, prompt_rows, judge)
    write_jsonl(Path(out_dir) / "arena" / "answers.jsonl",
                ({"checkpoint": name, "prompt_id": pid, "samples": _samples(texts)}
                 for name, per_prompt in answers.items() for pid, texts in per_prompt.items()))
    name = judge_name or getattr(judge, "name", None) or type(judge).__name__
    return write_results(battles, out_dir, rounds=rounds, seed=seed, plot=plot,
                         meta={"judge": name, "checkpoints": list(answers)})


def answers_from_eval(paths: Mapping[str, str | Path], *, key: str = "samples") -> dict[str, dict[str, list[str]]]:
    """{checkpoint: {prompt id: [answers]}} from evaluation answer files (JSONL rows with `id` and
    `key`: a list of sampled answers, or one answer)."""
    out = {}
    for name, path in paths.items():
        rows = read_jsonl(path)
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ArenaError(f"{path}: rows have no {key!r} answers (e.g. line {missing[0] + 1})")
        out[name] = {prompt_id(r, i): _samples(r[key]) for i, r in enumerate(rows)}
    return out


def ratings_markdown(ratings: Mapping[str, Mapping]) -> str:
    """The ratings as a markdown table (report.md)."""
    lines = ["| checkpoint | rating | 95% CI |", "|---|---|---|"]
    for name, r in ratings.items():
        lo, hi = r["ci95"]
        lines.append(f"| {name} | {r['rating']:.0f} | {lo:.0f} – {hi:.0f} |")
    return "\n".join(lines)


def plot_ratings(ratings: Mapping[str, Mapping], path: str | Path) -> Path:
    """Ratings with their 95% intervals as error bars, best on top (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ratings)[::-1]
    values = np.array([ratings[n]["rating"] for n in names])
    lo = np.array([ratings[n]["ci95"][0] for n in names])
    hi = np.array([ratings[n]["ci95"][1] for n in names])
    figure, axes = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    axes.errorbar(values, range(len(names)), xerr=[np.maximum(values - lo, 0), np.maximum(hi - values, 0)],
                  fmt="o", capsize=4)
    axes.set_yticks(range(len(names)), names)
    axes.axvline(ANCHOR, color="grey", linewidth=0.5)
    axes.set_xlabel("Bradley–Terry rating (95% bootstrap CI, by prompt)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------- (e) the CLI


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


def generate_answers(checkpoints: Mapping[str, str | Path], prompt_rows: Sequence[Mapping], *, samples: int = 2,
                     temperature: float = CHAT_TEMPERATURE, top_p: float = CHAT_TOP_P, max_new_tokens: int = 48,
                     batch_size: int = 32, seed: int = 0, say: Callable[[str], None] = print) -> dict[str, dict[str, list[str]]]:
    """{checkpoint: {prompt id: [sample 0, ...]}}: each checkpoint samples `samples` answers per prompt
    at the chat default, draw s with seed `seed + s` for every checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.common import ChatFormatError, check_chat_format, generate_replies

    conversations = [prompt_messages(dict(r)) for r in prompt_rows]
    ids = [prompt_id(r, i) for i, r in enumerate(prompt_rows)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    answers: dict[str, dict[str, list[str]]] = {}
    for name, path in checkpoints.items():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        try:
            check_chat_format(tokenizer, where=str(path))
        except ChatFormatError as error:  # a base model in the arena: it was never taught the format
            say(f"arena: {name}: {error}; it answers anyway")
        model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
        draws = [generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  do_sample=True, temperature=temperature, top_p=top_p, seed=seed + s)
                 for s in range(samples)]
        answers[name] = {pid: [draw[i]["reply"] for draw in draws] for i, pid in enumerate(ids)}
        say(f"arena: {name}: {samples} answer(s) to each of {len(ids)} prompts")
        del model
    return answers


GoldScorerFor = Callable[[Path], Callable[[list[Mapping], list[str]], Sequence[float]]]


def _judge(spec: str, *, run_dir: Path, margin: float, batch_size: int, gold_scorer_for: GoldScorerFor | None):
    if spec == "gold":
        # The gold judge belongs to the demo, which the arena does not import: the CLI hands over
        # `gold_scorer_for(run_dir)`, the demo run's scorer (see main).
        if gold_scorer_for is None:
            raise ArenaError("--judge gold is the demo's judge, available on a demo run directory through `chatsmith arena`")
        return ScoreJudge(gold_scorer_for(run_dir), margin=margin, name="gold")
    if spec.startswith("reward:") and spec != "reward:":
        return RewardModelJudge(spec.removeprefix("reward:"), margin=margin, batch_size=batch_size)
    raise ArenaError(f"--judge is reward:DIR, gold or human, not {spec!r}")


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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """`chatsmith arena ...` on the CLI's subparsers."""
    parser = subparsers.add_parser("arena", help="pairwise battles between checkpoints -> Bradley-Terry ratings with CIs",
                                   description=__doc__.split("\n\n")[0])
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="two or more checkpoint dirs")
    parser.add_argument("--judge", default=None, metavar="JUDGE", help="reward:DIR (a reward model), gold (the demo's judge) or human")
    parser.add_argument("--prompts", default=None, metavar="PROMPTS_JSONL",
                        help="held-out prompts (default: DIR/data/test_prompts.jsonl, else eval_prompts.jsonl)")
    parser.add_argument("--out", default=None, metavar="DIR", help="writes DIR/arena/ (default: the checkpoints' run directory)")
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt and checkpoint (default 2)")
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=CHAT_TOP_P)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=100, help="bootstrap rounds (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie-margin", type=float, default=0.0, help="a tie when the judge's two scores differ by less")
    parser.add_argument("--ingest", default=None, metavar="EXPORT", help="ratings from the labelers' Label Studio export")


def run(args: argparse.Namespace, *, say: Callable[[str], None] = print, gold_scorer_for: GoldScorerFor | None = None) -> int:
    """`chatsmith arena` with parsed arguments. `gold_scorer_for(run_dir)`: the demo run's gold
    scorer `(rows, replies) -> scores`, for `--judge gold` (raise ArenaError when DIR is no demo run)."""
    checkpoints = [Path(p) for p in args.checkpoints]
    out = Path(args.out) if args.out else _run_dir_of(checkpoints)
    if out is None:
        raise ArenaError("--out DIR is needed (the checkpoints are not all in one run directory)")
    if args.ingest:
        battles, summary = ingest_human(args.ingest, out)
        say(f"arena: ingest read {summary['read']}, accepted {summary['accepted']}, rejected {summary['rejected']}")
        ratings = write_results(battles, out, rounds=args.rounds, seed=args.seed, meta={"judge": "human", "export": str(args.ingest)})
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
    prompts_path = Path(args.prompts) if args.prompts else next(
        (p for p in (out / "data" / "test_prompts.jsonl", out / "data" / "eval_prompts.jsonl") if p.exists()), None)
    if prompts_path is None:
        raise ArenaError("--prompts PROMPTS_JSONL is needed (no held-out prompts in DIR/data)")
    rows = _prompts(prompts_path)
    names = checkpoint_names(checkpoints)
    judge = None if args.judge == "human" else _judge(args.judge, run_dir=out, margin=args.tie_margin,
                                                        batch_size=args.batch_size, gold_scorer_for=gold_scorer_for)
    answers = generate_answers(dict(zip(names, checkpoints)), rows, samples=args.samples, temperature=args.temperature,
                               top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                               seed=args.seed, say=say)
    if judge is None:
        exported = export_human_tasks(answers, rows, out)
        say(f"arena: {exported['tasks']} Label Studio tasks in {exported['dir']}/tasks "
            f"({exported['auto_battles']} battles decided without a labeler: identical or empty answers)")
        say(f"arena: import label_studio_import.json with label_studio_config.xml; then chatsmith arena --ingest EXPORT --out {out}")
        return 0
    ratings = arena_from_answers(answers, rows, judge, out, rounds=args.rounds, seed=args.seed, judge_name=args.judge)
    say(ratings_markdown(ratings))
    say(f"arena: wrote {out / 'arena' / 'ratings.json'}")
    return 0


def main(argv: Sequence[str] | None = None, *, gold_scorer_for: GoldScorerFor | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatsmith arena", description=__doc__.split("\n\n")[0])
    _arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args, gold_scorer_for=gold_scorer_for)
    except ArenaError as error:
        print(f"chatsmith arena: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
