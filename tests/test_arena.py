"""pipeline.eval.arena: Bradley–Terry ratings, prompt-level bootstrap, battles, judges, the human path, the CLI."""

import hashlib
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline.eval.arena import ArenaError, cli
from pipeline.eval.arena.battles import play_battles
from pipeline.eval.arena.cli import checkpoint_names
from pipeline.eval.arena.fit import Battle, battle_stats, bootstrap_ratings, fit_bradley_terry
from pipeline.eval.arena.human import export_human_tasks, ingest_human
from pipeline.eval.arena.results import arena_from_answers, ratings_markdown
from pipeline.eval.judges import PairwiseJudge, RewardModelJudge
from tiny import REPO, env
from tiny_models import build_tiny_model

STRENGTH = {"base": 0.0, "sft": 0.5, "ppo": 1.0, "dpo": 1.5}  # natural log-odds


def synthetic_battles(prompts: int, *, seed: int = 0, strength=STRENGTH) -> list[Battle]:
    """One battle per pair of players per prompt, won with the Bradley–Terry probability."""
    rng = np.random.default_rng(seed)
    names = list(strength)
    battles = []
    for p in range(prompts):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                win = rng.random() < 1.0 / (1.0 + math.exp(strength[b] - strength[a]))
                battles.append(Battle(f"p{p}", a, b, "a" if win else "b"))
    return battles


def width(rating: dict) -> float:
    return rating["ci95"][1] - rating["ci95"][0]


class ScoreJudge:
    """A pointwise judge (`pipeline.eval.judges.Judge`) from a function of the replies."""

    version = "test"

    def __init__(self, score, name: str = "score"):
        self.score, self.name = score, name

    def __call__(self, rows, replies):
        return [{"score": float(v), "criteria": {}, "flags": {}} for v in self.score(rows, replies)]


def pairwise(score, *, margin: float = 0.0, name: str = "score") -> PairwiseJudge:
    return PairwiseJudge(ScoreJudge(score, name=name), margin=margin)


def noisy_scorer(strength=STRENGTH, noise: float = 1.0):
    """A gold-like pointwise scorer: the answer's checkpoint strength plus answer-specific noise
    (deterministic in the answer text, so the judge is blind to position)."""
    def score(rows, replies):
        out = []
        for reply in replies:
            digest = int(hashlib.sha256(reply.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            out.append(strength[reply.split("|")[0]] + noise * math.log(digest / (1 - digest)))
        return out
    return score


def synthetic_answers(prompts: int, samples: int = 2, names=tuple(STRENGTH)):
    rows = [{"id": f"q{p}", "prompt": f"question {p}?"} for p in range(prompts)]
    answers = {n: {r["id"]: [f"{n}|{r['id']}|{s}" for s in range(samples)] for r in rows} for n in names}
    return answers, rows


# ---------------------------------------------------------------------------------- Bradley–Terry


def test_bradley_terry_recovers_players_of_known_strength():
    ratings = fit_bradley_terry(synthetic_battles(400))
    assert list(ratings) == ["dpo", "ppo", "sft", "base"]
    assert np.mean(list(ratings.values())) == pytest.approx(1000.0)
    centred = np.mean(list(STRENGTH.values()))
    for name, rating in ratings.items():  # back to natural log-odds
        assert (rating - 1000.0) * math.log(10) / 400 == pytest.approx(STRENGTH[name] - centred, abs=0.15)


def test_ties_count_half():
    # 3 wins, 1 loss, 2 ties = 4 of 6: odds 2:1, which is 400 * log10(2) = 120.4 points
    battles = [Battle("p", "x", "y", w) for w in ("a", "a", "a", "b", "tie", "tie")]
    ratings = fit_bradley_terry(battles)
    assert ratings["x"] - ratings["y"] == pytest.approx(400 * math.log10(2), abs=0.3)
    same_score = [Battle("p", "x", "y", w) for w in ("a", "a", "a", "a", "b", "b")]
    assert fit_bradley_terry(same_score)["x"] == pytest.approx(ratings["x"], abs=1e-6)
    # the order the judge saw them in does not matter to the fit
    flipped = [Battle("p", "y", "x", {"a": "b", "b": "a", "tie": "tie"}[b.winner]) for b in battles]
    assert fit_bradley_terry(flipped)["x"] == pytest.approx(ratings["x"], abs=1e-6)


def test_a_checkpoint_that_wins_every_battle_gets_a_finite_rating_and_anchoring():
    battles = [Battle(f"p{i}", "good", "bad", "a") for i in range(20)] + [Battle("p0", "bad", "meh", "tie")]
    ratings = fit_bradley_terry(battles)
    assert all(math.isfinite(r) for r in ratings.values())
    assert list(ratings) == ["good", "meh", "bad"]
    anchored = fit_bradley_terry(battles, anchor_model="meh")
    assert anchored["meh"] == pytest.approx(1000.0)
    assert anchored["good"] - anchored["bad"] == pytest.approx(ratings["good"] - ratings["bad"])


def test_bootstrap_intervals_contain_the_rating_and_widen_with_fewer_prompts():
    many = bootstrap_ratings(synthetic_battles(320), rounds=200, seed=0)
    few = bootstrap_ratings(synthetic_battles(20), rounds=200, seed=0)
    for ratings in (many, few):
        assert set(ratings) == set(STRENGTH)
        for r in ratings.values():
            assert r["ci95"][0] <= r["rating"] <= r["ci95"][1]
    # 16x fewer prompts: about 4x wider
    ratio = np.mean([width(few[n]) for n in STRENGTH]) / np.mean([width(many[n]) for n in STRENGTH])
    assert 2.5 < ratio < 6.0
    assert bootstrap_ratings(synthetic_battles(20), rounds=200, seed=0) == few  # deterministic for a seed


def test_position_blind_duplicates_do_not_shrink_the_intervals():
    answers, rows = synthetic_answers(60, samples=1)
    battles = play_battles(answers, rows, pairwise(noisy_scorer()))
    # a position-blind judge says the same thing in both orders: the second verdict is a duplicate
    once = [b for b in battles if b.model_a < b.model_b]
    assert len(once) * 2 == len(battles)
    by_prompt_both = bootstrap_ratings(battles, rounds=300, seed=1)
    by_prompt_once = bootstrap_ratings(once, rounds=300, seed=1)
    for name in STRENGTH:
        assert by_prompt_both[name]["rating"] == pytest.approx(by_prompt_once[name]["rating"], abs=1e-6)
        assert width(by_prompt_both[name]) == pytest.approx(width(by_prompt_once[name]), rel=0.02)
    # what the prompt-level bootstrap avoids: resampling single verdicts counts the duplicate as evidence
    by_battle_both = bootstrap_ratings(battles, by="battle", rounds=300, seed=1)
    by_battle_once = bootstrap_ratings(once, by="battle", rounds=300, seed=1)
    shrink = np.mean([width(by_battle_both[n]) / width(by_battle_once[n]) for n in STRENGTH])
    assert shrink < 0.85  # ~1/sqrt(2)


# ---------------------------------------------------------------------------------- battles, judges


def test_every_pair_prompt_and_sample_is_judged_in_both_orders_and_each_answer_scored_once():
    answers, rows = synthetic_answers(5, samples=2, names=("base", "sft", "ppo"))
    judge = pairwise(noisy_scorer())
    battles = play_battles(answers, rows, judge)
    assert len(battles) == 5 * 3 * 2 * 2  # prompts x pairs x samples x orders
    keys = {(b.prompt_id, b.sample, b.model_a, b.model_b) for b in battles}
    assert len(keys) == len(battles)
    assert all((b.prompt_id, b.sample, b.model_b, b.model_a) in keys for b in battles)
    assert judge.scored == 3 * 5 * 2  # each distinct (prompt, answer) once


def test_swap_agreement_measures_a_judges_position_bias():
    """A judge that favours the answer shown first on half the prompts: there the two orders of a battle disagree,
    elsewhere (the longer answer wins) they agree. Known by construction: swap agreement 2/4, and the first
    position wins all 4 biased battles plus 2 of the 4 fair ones (the longer answer is first in one order of each)."""
    answers = {"sft": {f"q{p}": ["short"] for p in range(4)}, "ppo": {f"q{p}": ["a longer answer"] for p in range(4)}}
    rows = [{"id": f"q{p}", "prompt": f"question {p}?"} for p in range(4)]

    def judge(row, first, second):
        if row["id"] in ("q0", "q1"):
            return "a"
        return "a" if len(first) > len(second) else "b"

    stats = battle_stats(play_battles(answers, rows, judge))
    assert (stats["battles"], stats["swapped_pairs"], stats["ties"]) == (8, 4, 0)
    assert stats["swap_agreement"] == pytest.approx(2 / 4)
    assert stats["first_position_win_rate"] == pytest.approx(6 / 8)
    always_first = battle_stats(play_battles(answers, rows, lambda row, first, second: "a"))
    assert always_first["swap_agreement"] == 0.0 and always_first["first_position_win_rate"] == 1.0


def test_prompts_missing_an_answer_are_left_out_and_bad_verdicts_refused():
    answers, rows = synthetic_answers(3, samples=1, names=("sft", "ppo"))
    del answers["ppo"]["q2"]
    battles = play_battles(answers, rows, lambda row, a, b: "tie")
    assert {b.prompt_id for b in battles} == {"q0", "q1"}
    with pytest.raises(ValueError, match="verdict"):
        play_battles(answers, rows, lambda row, a, b: "left")


def test_score_judge_margin_gives_ties():
    row = {"id": "q", "prompt": "?"}
    judge = pairwise(lambda rows, replies: [float(len(r)) for r in replies], margin=2.5)
    assert judge(row, "abcd", "ab") == "tie"
    assert judge(row, "abcdefgh", "ab") == "a"
    assert judge(row, "ab", "abcdefgh") == "b"
    assert pairwise(lambda rows, replies: [1.0] * len(replies))(row, "x", "y") == "tie"


def test_arena_from_answers_writes_ratings_json(tmp_path):
    answers, rows = synthetic_answers(30, samples=2)
    ratings = arena_from_answers(answers, rows, pairwise(noisy_scorer(noise=0.3), name="gold"), tmp_path, rounds=50)
    written = json.loads((tmp_path / "arena" / "ratings.json").read_text())
    assert written == ratings
    assert set(written) == set(STRENGTH)
    assert list(written)[0] == "dpo" and list(written)[-1] == "base"
    for entry in written.values():
        assert set(entry) == {"rating", "ci95"}
        assert isinstance(entry["rating"], float) and len(entry["ci95"]) == 2
        assert entry["ci95"][0] <= entry["rating"] <= entry["ci95"][1]
    summary = json.loads((tmp_path / "arena" / "summary.json").read_text())
    assert summary["judge"] == "gold" and summary["battles"] == 30 * 6 * 2 * 2 and summary["prompts"] == 30
    assert len((tmp_path / "arena" / "battles.jsonl").read_text().splitlines()) == summary["battles"]
    assert (tmp_path / "arena" / "ratings.png").stat().st_size > 1000
    assert "| dpo |" in ratings_markdown(written)


def test_reward_model_judge_scores_with_the_chat_template(tiny_assets):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [{"id": "q0", "prompt": "What is the river of Alder?"}, {"id": "q1", "prompt": "Hello!"}]
    answers = {"sft": {"q0": ["The river of Alder is the Sorrel.", "Sorrel."], "q1": ["Hello! How can I help?", "Hi."]},
               "ppo": {"q0": ["It is the Tallow.", "Sorrel."], "q1": ["Hello!", "People in Brim eat plum cake."]}}
    judge = PairwiseJudge(RewardModelJudge(tiny_assets["reward"], batch_size=3))
    battles = play_battles(answers, rows, judge)
    assert judge.scored == 7  # 8 answers, one repeated (q0 sample 1 is "Sorrel." for both)

    # the same scores one conversation at a time, without padding
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_assets["reward"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_assets["reward"])).eval()
    def direct(row, answer):
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}], tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return model(**ids).logits[0, 0].item()
    for row in rows:
        for name in answers:
            for answer in answers[name][row["id"]]:
                assert judge.score(row, answer) == pytest.approx(direct(row, answer), abs=1e-4)
    assert judge.scored == 7
    for b in battles:
        row = rows[int(b.prompt_id[1])]
        a, o = answers[b.model_a][b.prompt_id][b.sample], answers[b.model_b][b.prompt_id][b.sample]
        expected = "tie" if a == o else "a" if direct(row, a) > direct(row, o) else "b"
        assert b.winner == expected
    assert PairwiseJudge(RewardModelJudge(tiny_assets["reward"]), margin=1e6)(rows[0], "Sorrel.", "It is the Tallow.") == "tie"


# ------------------------------------------------------------------------------------- human path


def preference_export(tasks_jsonl, choose) -> list[dict]:
    """A Label Studio JSON export of the arena's tasks as labelers answer them with its config:
    one `preference` choice (A, B or Tie) per annotation."""
    tasks = [json.loads(line) for line in tasks_jsonl.read_text().splitlines()]
    out = []
    for index, task in enumerate(tasks, start=1):
        out.append({"id": index, "data": {"task_id": task["task_id"]}, "annotations": [{
            "id": index, "completed_by": {"id": 1, "email": "ann@labelers.local"}, "was_cancelled": False, "lead_time": 9.0,
            "result": [{"from_name": "preference", "to_name": "replies", "type": "choices",
                        "value": {"choices": [choose(task)]}}]}]})
    return out


def test_label_studio_export_round_trip_through_labeling_ingest(tmp_path):
    from labeling.cli import main as labels_main

    rows = [{"id": f"q{p}", "prompt": f"Which river runs through town {p}?"} for p in range(3)]
    answers = {"sft": {r["id"]: [f"The river of town {r['id']} is the Sorrel, I think, maybe."] for r in rows},
               "ppo": {r["id"]: [f"The Sorrel ({r['id']})."] for r in rows}}
    answers["ppo"]["q2"] = answers["sft"]["q2"]  # identical answers: a tie nobody is asked about
    exported = export_human_tasks(answers, rows, tmp_path)
    assert exported["tasks"] == 4 and exported["auto_battles"] == 2
    tasks_dir = tmp_path / "arena" / "human" / "tasks"
    assert "preference" in (tasks_dir / "label_studio_config.xml").read_text()
    assert len(json.loads((tasks_dir / "label_studio_import.json").read_text())) == 4

    # labelers prefer ppo's answer, except a tie on q1
    def choose(task):
        prompt = task["prompt"][0]["content"]
        if prompt.endswith("town 1?"):
            return "Tie"
        return "A" if task["candidates"][0]["model"] == "ppo" else "B"
    export = tmp_path / "export.json"
    export.write_text(json.dumps(preference_export(tasks_dir / "tasks.jsonl", choose)))

    # what `chatsmith labels ingest --format label-studio` reads
    assert labels_main(["ingest", "--format", "label-studio", str(export), "--out", str(tmp_path / "li"),
                        "--tasks", str(tasks_dir / "tasks.jsonl")]) == 0
    assert json.loads((tmp_path / "li" / "summary.json").read_text())["accepted"] == 4

    battles, summary = ingest_human(export, tmp_path)
    assert summary["accepted"] == 4 and summary["rejected"] == 0
    got = sorted((b.prompt_id, b.model_a, b.model_b, b.winner) for b in battles)
    assert got == sorted([("q0", "sft", "ppo", "b"), ("q0", "ppo", "sft", "a"),
                          ("q1", "sft", "ppo", "tie"), ("q1", "ppo", "sft", "tie"),
                          ("q2", "sft", "ppo", "tie"), ("q2", "ppo", "sft", "tie")])

    # the project's own exporter (a ranker; a tie is one bucket) reads back the same way
    from labeling.tasks import label_studio_export
    tasks = [json.loads(line) for line in (tasks_dir / "tasks.jsonl").read_text().splitlines()]
    judgments = {t["task_id"]: [{"annotator": "ann", "ranking": [["a", "b"]] if choose(t) == "Tie" else
                                 [["a"], ["b"]] if choose(t) == "A" else [["b"], ["a"]]}] for t in tasks}
    ranker_export = label_studio_export(tasks, judgments, tmp_path / "ranker_export.json")
    again, _ = ingest_human(ranker_export, tmp_path)
    assert sorted((b.prompt_id, b.model_a, b.model_b, b.winner) for b in again) == got

    assert cli.main(["--ingest", str(export), "--out", str(tmp_path), "--rounds", "20"]) == 0
    ratings = json.loads((tmp_path / "arena" / "ratings.json").read_text())
    assert list(ratings) == ["ppo", "sft"]


# -------------------------------------------------------------------------------------------- CLI


def test_checkpoint_names(tmp_path):
    for run in ("run_a", "run_b"):
        (tmp_path / run / "sft").mkdir(parents=True)
        (tmp_path / run / "manifest.json").write_text("{}")
    (tmp_path / "loose" / "ppo").mkdir(parents=True)
    assert checkpoint_names([tmp_path / "run_a" / "sft", tmp_path / "loose" / "ppo"]) == ["sft", str(tmp_path / "loose" / "ppo")]
    assert checkpoint_names([tmp_path / "run_a" / "sft", tmp_path / "run_b" / "sft"]) == ["run_a/sft", "run_b/sft"]


def test_help_imports_no_torch():
    """`--help` answers without the heavy stack (how fast, against a bare interpreter: tests/bench/bench_cli.py)."""
    out = subprocess.run([sys.executable, "-m", "pipeline.eval.arena", "--help"], cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.returncode == 0 and "--judge" in out.stdout and "--ingest" in out.stdout
    code = ("import runpy, sys\ntry:\n    sys.argv = ['arena', '--help']; runpy.run_module('pipeline.eval.arena', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr[-2000:]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--judge", "gold", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not checkpoint directories" in err


def test_cli_plays_tiny_checkpoints_with_a_reward_judge_and_exports_for_humans(tiny_assets, tmp_path):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"stages": {}}')
    shutil.copytree(tiny_assets["policy"], run / "sft")
    build_tiny_model(run / "ppo", AutoTokenizer.from_pretrained(str(tiny_assets["tokenizer"])), seed=7)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["What is the river of Alder?", "Hello!", "What do people in Brim eat?"])))
    common = [str(run / "sft"), str(run / "ppo"), "--prompts", str(prompts), "--max-new-tokens", "6", "--rounds", "20"]
    assert cli.main([*common, "--judge", f"reward:{tiny_assets['reward']}"]) == 0
    ratings = json.loads((run / "arena" / "ratings.json").read_text())
    assert set(ratings) == {"sft", "ppo"}
    summary = json.loads((run / "arena" / "summary.json").read_text())
    assert summary["battles"] == 3 * 1 * 2 * 2
    answers = [json.loads(line) for line in (run / "arena" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all(len(a["samples"]) == 2 for a in answers)
    # every verdict is the reward model's: its own forward pass on prompt + answer, rendered with its template
    from transformers import AutoModelForSequenceClassification

    reward = AutoModelForSequenceClassification.from_pretrained(tiny_assets["reward"]).eval()
    reward_tokenizer = AutoTokenizer.from_pretrained(str(tiny_assets["reward"]))
    prompt_of = {json.loads(line)["id"]: json.loads(line)["prompt"] for line in prompts.read_text().splitlines()}
    text = {(a["checkpoint"], a["prompt_id"], s): t for a in answers for s, t in enumerate(a["samples"])}

    def score(prompt_id, answer):
        messages = [{"role": "user", "content": prompt_of[prompt_id]}, {"role": "assistant", "content": answer}]
        return reward(**reward_tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)).logits[0, 0].item()

    battles = [json.loads(line) for line in (run / "arena" / "battles.jsonl").read_text().splitlines()]
    assert len(battles) == summary["battles"]
    for b in battles:
        a, other = (score(b["prompt_id"], text[(m, b["prompt_id"], b["sample"])]) for m in (b["model_a"], b["model_b"]))
        expected = "tie" if text[(b["model_a"], b["prompt_id"], b["sample"])] == text[(b["model_b"], b["prompt_id"], b["sample"])] \
            else ("a" if a > other else "b")
        assert b["winner"] == expected, (b, a, other)

    # the gold judge comes through the CLI's hook (the run's data source's judge); here the longer answer wins
    longer = lambda run_dir: ScoreJudge(lambda rows, replies: [float(len(r)) for r in replies], name="gold")  # noqa: E731
    assert cli.main([*common, "--judge", "gold"], judge_of_run=longer) == 0
    assert json.loads((run / "arena" / "summary.json").read_text())["judge"] == "gold"

    assert cli.main([*common, "--judge", "human"]) == 0
    human = run / "arena" / "human"
    plan = (human / "plan.jsonl").read_text().splitlines()
    auto = (human / "auto_battles.jsonl").read_text().splitlines()
    assert len(plan) + len(auto) == 12


def test_the_demo_gold_judge_plugs_in_through_the_run_directory(tmp_path):
    """`--judge gold` asks the run directory's data source for its judge (`pipeline.registry.data_source`): a demo run
    has the gold judge, a files run has none."""
    import yaml

    from pipeline.recipe import dump_recipe, load_recipe
    from tiny import DEMO, TINY

    recipe = load_recipe(DEMO, TINY)
    (tmp_path / "recipe.yaml").write_text(dump_recipe(recipe))
    judge = cli._judge("gold", run_dir=tmp_path, margin=0.0, batch_size=8, judge_of_run=cli.data_source_judge)
    world = judge.judge.world
    rows = world.eval_prompts()[:2]
    right = [f"It is {world.town(r['town']).facts[r['attribute']]}." for r in rows]
    assert [judge(r, good, "I do not know.") for r, good in zip(rows, right)] == ["a", "a"]
    assert [judge(r, "I do not know.", good) for r, good in zip(rows, right)] == ["b", "b"]
    files = tmp_path / "files"
    files.mkdir()
    (files / "recipe.yaml").write_text(yaml.safe_dump({**yaml.safe_load(dump_recipe(recipe)), "data": {"source": "files"}}))
    with pytest.raises(ArenaError, match="not a demo run"):
        cli._judge("gold", run_dir=files, margin=0.0, batch_size=8, judge_of_run=cli.data_source_judge)
    with pytest.raises(ArenaError, match="reward:DIR"):
        cli._judge("rm", run_dir=tmp_path, margin=0.0, batch_size=8, judge_of_run=cli.data_source_judge)


def test_the_runs_arena_reuses_the_evaluations_chat_answers(tmp_path):
    """The run's arena (`pipeline.eval.run.arena_answers`) takes a stage's chat-default replies to the test prompts from
    its eval_answers.jsonl, by prompt id, and answers nothing itself when they are all there."""
    from pipeline.eval.run import arena_answers

    class Run:
        def stage_dir(self, name):
            return tmp_path / name

        def say(self, text):
            raise AssertionError(f"answered instead of reusing: {text}")

    (tmp_path / "sft").mkdir()
    lines = [{"id": "q1", "split": "test", "replies": {"chat": [{"reply": "b0"}, {"reply": "b1"}]}},
             {"id": "q0", "split": "test", "replies": {"chat": [{"reply": "a0"}, {"reply": "a1"}]}},
             {"id": "d0", "split": "dev", "replies": {"greedy": [{"reply": "x"}]}}]
    (tmp_path / "sft" / "eval_answers.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    test_rows = [{"id": "q0", "prompt": "?"}, {"id": "q1", "prompt": "!"}]
    assert arena_answers(Run(), "sft", test_rows, ["q0", "q1"]) == {"q0": ["a0", "a1"], "q1": ["b0", "b1"]}
