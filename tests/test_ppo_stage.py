"""The PPO stage end to end on tiny models: files, a known reward, guards, and exact resume after kill -9.

The policy is a tiny Llama taught in a few steps to answer "It is a lynx." (2/3) or "It is a heron."
(1/3) and stop; the reward model is a real `LlamaForSequenceClassification` whose weights are
set by hand so that it scores replies by how much of the text is the token " heron".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from judges import WordJudge, monitor
from stages.common import read_jsonl
from stages.config import PPOConfig

TOWNS = ["Alder", "Brim", "Corvi", "Dunmere"]
HERON, LYNX = "It is a heron.", "It is a lynx."


heron_gold = WordJudge("heron")
"""A stand-in gold judge: 1 for a reply that names the heron, 0 otherwise."""


def _write_prompts(path: Path, count: int, offset: int = 0, split: str | None = None):
    with open(path, "w") as handle:
        for i in range(offset, offset + count):
            row = {"prompt": f"What is the emblem of {TOWNS[i % 4]}?", "id": i}
            handle.write(json.dumps({**row, "split": split} if split else row) + "\n")


def _train_policy(path: Path, tokenizer):
    """A tiny causal LM that answers lynx (about 2/3) or heron (1/3) and ends with the end-of-turn token:
    greedy decoding says lynx, so the gold score of the SFT policy is 0 until PPO finds the heron."""
    from tiny_models import build_tiny_model

    model = build_tiny_model(path, tokenizer, kind="causal", seed=3)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is the emblem of {town}?"}, {"role": "assistant", "content": answer}], tokenize=False
        )
        for town in TOWNS
        for answer in (HERON, LYNX, LYNX)
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


def _heron_reward_model(path: Path, tokenizer):
    """Hand-set reward model: zero query/key -> uniform attention over the sequence, identity value
    and output projections, no MLP; only the " heron" embedding has a component along dimension 0,
    and the score head reads dimension 0. The score grows with the share of " heron" tokens."""
    from tiny_models import build_tiny_model

    model = build_tiny_model(path, tokenizer, kind="reward", seed=1)
    heron_id = tokenizer(" heron", add_special_tokens=False)["input_ids"]
    assert len(heron_id) == 1, "the tiny tokenizer should have ' heron' as one token"
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = 0.0
        embeddings[heron_id[0], 0] = 1.0
        hidden = embeddings.shape[1]
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.self_attn.v_proj.weight.copy_(torch.eye(hidden))
            layer.self_attn.o_proj.weight.copy_(torch.eye(hidden))
            layer.mlp.down_proj.weight.zero_()
        model.score.weight.zero_()
        model.score.weight[0, 0] = 2.0
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def heron_world(tiny_assets, tmp_path_factory):
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # tiny models: one thread is fastest and unaffected by a busy machine
    root = tmp_path_factory.mktemp("heron")
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])
    world = {
        "policy": _train_policy(root / "policy", tokenizer),
        "reward": _heron_reward_model(root / "reward", tokenizer),
        "prompts": root / "prompts.jsonl",
        "eval_prompts": root / "eval.jsonl",
        "root": root,
    }
    _write_prompts(world["prompts"], 64)
    _write_prompts(world["eval_prompts"], 12, offset=1000, split="dev")  # the monitor's (held-out, dev) prompts
    return world


def _config(**overrides) -> PPOConfig:
    base = dict(
        max_steps=3, save_steps=2, eval_steps=2, rollout_batch_size=8, batch_size=8, max_new_tokens=8,
        learning_rate=3e-3, num_eval_prompts=8, ppo_epochs=2, seed=0,
    )
    return PPOConfig(**{**base, **overrides})


def _run(world, config, output_dir, *, gold=heron_gold, **kwargs):
    """The stage as the runner calls it: with a monitor of the held-out prompts, the reward model and `gold`."""
    from stages.rlhf import ppo

    args = {"policy": world["policy"], "reward_model": world["reward"], "prompts": world["prompts"], "output_dir": output_dir, **kwargs}
    holdout = Path(args["reward_model"]) / "holdout"  # where the registry finds a held-out reward model
    return ppo.run(config, **args, monitor=monitor(world["eval_prompts"], reward_model=args["reward_model"], gold=gold,
                                                   holdout_reward_model=holdout if holdout.exists() else None))


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _counters(out: Path) -> dict:
    return json.loads((out / "resume" / "state.json").read_text())["counters"]


def _resume_policy(out: Path) -> dict:
    """The policy's weights in resume/ (saved as part of the policy + value module)."""
    return {k[len("policy."):]: v for k, v in _tensors(out / "resume" / "model.safetensors").items() if k.startswith("policy.")}


# --------------------------------------------------------------------------------------------- tests


def test_reward_model_prefers_heron(heron_world):
    """The known reward really is known: the hand-set classifier scores heron replies higher."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.rlhf.rollout import positions as _positions, sequence_scores as _sequence_scores

    tokenizer = AutoTokenizer.from_pretrained(heron_world["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(heron_world["reward"])
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": "What is the emblem of Brim?"}, {"role": "assistant", "content": a}], tokenize=False)
        for a in (HERON, LYNX, "heron heron heron")
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    scores = _sequence_scores(model, batch["input_ids"], batch["attention_mask"], _positions(batch["attention_mask"]))
    assert scores[0] > scores[1] + 0.3
    assert scores[2] > scores[0]


def test_left_padded_rollout_logprobs_match_unpadded_forward(heron_world):
    """Log-probs taken from `generate` (KV cache, left padding) equal those of a full forward of each
    prompt + reply alone, and so do the stage's own padded forwards: masks are right and taking the
    rollout log-probs from `generate` is safe. (Llama's RoPE is blind to a constant position shift, so
    this does not catch wrong position ids; absolute-position models would.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.rlhf import ppo_core as core, rollout

    tokenizer = AutoTokenizer.from_pretrained(heron_world["policy"])
    model = AutoModelForCausalLM.from_pretrained(heron_world["policy"])
    rows = [{"prompt": "hi"}, {"prompt": "What is the emblem of Alder? Tell me, please, the emblem."}, {"prompt": "Brim or Corvi or Dunmere"}]
    prompts = rollout.encode_prompts(tokenizer, rows, 128)
    assert len({len(p) for p in prompts}) == 3
    rows = rows * 3
    prompts = prompts * 3
    config = _config(max_new_tokens=10, temperature=1.5)  # hot sampling: replies of different lengths
    torch.manual_seed(0)
    prompt_ids, prompt_mask, reply, (logprobs, _) = rollout.generate(model, tokenizer, prompts, config, sample=True, keep_logits=True, chunk=8,
                                                                     stop_ids=[tokenizer.eos_token_id])
    batch = rollout.assemble(prompt_ids, prompt_mask, reply, [tokenizer.eos_token_id])
    lengths = batch.mask.sum(-1)
    assert batch.ended.any() and lengths.min() < lengths.max()  # replies of several lengths: right padding is exercised
    # The padded batch as the stage's reference / training forwards see it (its masks and position ids).
    padded = rollout.reply_logits(model, batch.input_ids, batch.attention_mask, batch.position_ids, reply.shape[1])
    padded_logprobs = core.logprobs_from_logits(padded, reply, temperature=1.5)
    for row, prompt in enumerate(prompts):
        length = int(batch.mask[row].sum())
        ids = torch.tensor([prompt + reply[row, :length].tolist()])
        with torch.no_grad():
            logits = model(ids).logits[:, len(prompt) - 1 : -1]
        alone = core.logprobs_from_logits(logits, reply[row : row + 1, :length], temperature=1.5)[0]
        torch.testing.assert_close(logprobs[row, :length], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(padded_logprobs[row, :length], alone, atol=1e-5, rtol=0)


def test_stage_writes_checkpoint_metrics_and_eval(heron_world, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    reward = tmp_path / "reward"
    shutil.copytree(heron_world["reward"], reward)
    (reward / "reward_stats.json").write_text(json.dumps({"mean": 1.0, "std": 2.0}))
    out = tmp_path / "ppo"
    config = _config(value_init="zero", num_minibatches=2, gradient_accumulation_steps=2, lr_scheduler="linear", warmup_steps=1)
    result = _run(heron_world, config, out, reward_model=reward, meta={"parents": {"policy": "x"}})

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "metrics.jsonl", "eval.json", "chatsmith.json"):
        assert (out / name).exists(), name
    assert not (out / "resume").exists()  # removed at the end without keep_resume
    expected = {f"monitor_{k}" for k in ("gold_score", "gold_score_sft", "end_of_turn_rate", "kl_to_sft", "reward_score",
                                         "reward_score_sft", "num_eval_prompts")}
    assert expected <= set(result)
    assert json.loads((out / "eval.json").read_text()) == result
    assert result["monitor_num_eval_prompts"] == 12
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["stage"] == "ppo" and meta["parents"] == {"policy": "x"} and meta["config"]["value_init"] == "zero"

    before, after = _tensors(heron_world["policy"] / "model.safetensors"), _tensors(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        for key in ("reward_raw", "reward_normalized", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "explained_variance",
                    "reply_length", "end_of_turn_rate", "time_generate_s", "time_score_s", "time_train_s", "time_s"):
            assert key in row, key
        # reward normalised with the reward stage's statistics
        assert row["reward_normalized"] == pytest.approx((row["reward_raw"] - 1.0) / 2.0, abs=1e-5)
    assert "eval_gold_score" in rows[0] and "eval_gold_score" in rows[2] and "eval_reward_score" in rows[3]
    assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollout: policy == reference

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(heron_world["policy"]).config.vocab_size


def test_keep_updates_writes_each_evaluated_policy(heron_world, tmp_path):
    """`keep_updates`: the policy of every monitor evaluation (eval_steps=2 of 3 updates: 2, and the last) is a
    loadable checkpoint in updates/update-N/; the last is the stage's output when select_best is last."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ppo"
    _run(heron_world, _config(keep_updates=True), out)
    updates = out / "updates"
    assert sorted(p.name for p in updates.iterdir()) == ["update-2", "update-3"]
    for name in ("update-2", "update-3"):
        for file in ("config.json", "model.safetensors", "tokenizer.json", "chat_format.json"):
            assert (updates / name / file).exists(), f"{name}/{file}"
        assert AutoModelForCausalLM.from_pretrained(updates / name).config.vocab_size > 0
    last, final, second = (_tensors(p / "model.safetensors") for p in (updates / "update-3", out, updates / "update-2"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    assert any(not torch.equal(second[k], final[k]) for k in final)
    _run(heron_world, _config(max_steps=2), tmp_path / "plain")
    assert not (tmp_path / "plain" / "updates").exists()  # off by default


def test_known_reward_rises_with_kl_bounded(heron_world, tmp_path):
    out = tmp_path / "ppo"
    config = _config(max_steps=14, rollout_batch_size=16, batch_size=16, ppo_epochs=4, learning_rate=1e-3, eval_steps=7,
                     kl_coef=0.05, kl_limit=8.0, kl_limit_action="stop", save_steps=100)
    result = _run(heron_world, config, out)
    rows = read_jsonl(out / "metrics.jsonl")[1:]
    first, last = rows[:3], rows[-3:]

    def mean(rs, key):
        return sum(r[key] for r in rs) / len(rs)

    assert mean(last, "reward_raw") > mean(first, "reward_raw") + 0.2
    assert max(r["kl"] for r in rows) < 8.0
    assert rows[0]["end_of_turn_rate"] > 0.9  # the taught policy does stop ...
    assert mean(last, "end_of_turn_rate") >= 0.9  # ... and keeps stopping
    assert result["monitor_reward_score"] > result["monitor_reward_score_sft"] + 0.5
    assert result["monitor_gold_score_sft"] == 0.0 and result["monitor_gold_score"] == 1.0  # greedy: lynx before, heron after
    assert result["monitor_end_of_turn_rate"] >= 0.9
    assert 0 < result["monitor_kl_to_sft"] < 8.0


def test_non_finite_reward_stops_and_keeps_last_good(heron_world, tmp_path, monkeypatch):
    from stages.rlhf import ppo

    original = ppo.PPOTrainer.score
    calls = {"n": 0}

    def poisoned(self, batch):
        original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            batch.scores_raw[0] = float("nan")

    monkeypatch.setattr(ppo.PPOTrainer, "score", poisoned)
    out = tmp_path / "ppo"
    with pytest.raises(ppo.PPOStopped, match=r"non-finite reward.*update 3.*last good state \(update 2\)"):
        _run(heron_world, _config(max_steps=5, save_steps=2, eval_steps=10), out)
    assert _counters(out)["trainer"]["step"] == 2
    saved = _resume_policy(out)
    written = _tensors(out / "model.safetensors")
    assert all(torch.equal(saved[k], written[k]) for k in written)
    assert "non-finite" in json.loads((out / "chatsmith.json").read_text())["stopped"]
    assert not (out / "eval.json").exists()


def test_kl_limit_warns_or_stops(heron_world, tmp_path):
    from stages.rlhf import ppo

    config = _config(max_steps=2, kl_limit=1e-3, kl_limit_action="warn", learning_rate=1e-2)
    _run(heron_world, config, tmp_path / "warn")
    rows = read_jsonl(tmp_path / "warn" / "metrics.jsonl")
    assert any("kl_limit" in w for w in rows[2].get("warnings", []))
    with pytest.raises(ppo.PPOStopped, match="kl_limit"):
        _run(heron_world, config.model_copy(update={"kl_limit_action": "stop"}), tmp_path / "stop")


def test_select_best_needs_its_judge(heron_world, tmp_path):
    with pytest.raises(ValueError, match="select_best='gold' needs a gold judge"):
        _run(heron_world, _config(select_best="gold"), tmp_path / "x", gold=None)
    with pytest.raises(ValueError, match="select_best='holdout_reward' needs a holdout_reward judge"):
        _run(heron_world, _config(select_best="holdout_reward"), tmp_path / "y")
    with pytest.raises(ValueError, match="num_minibatches=3"):
        _config(num_minibatches=3)  # refused when the config is made, before any model loads


# ------------------------------------------------------------------------------------------ resume

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from judges import WordJudge, monitor
    from stages.config import PPOConfig
    from stages.rlhf import ppo

    world, out, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    original = ppo.PPOTrainer.rollout
    def rollout(self, step):
        with open(out + ".steps", "a") as handle:  # which updates this process really ran
            handle.write(f"{{step}}\\n")
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the stage
        return original(self, step)
    ppo.PPOTrainer.rollout = rollout
    config = PPOConfig(**json.loads(sys.argv[4]))
    ppo.run(config, policy=world["policy"], reward_model=world["reward"], prompts=world["prompts"],
            output_dir=out, monitor=monitor(world["eval_prompts"], reward_model=world["reward"], gold=WordJudge("heron")))
    """
)


@pytest.mark.slow
def test_exact_resume_after_kill(heron_world, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    world = json.dumps({k: str(v) for k, v in heron_world.items()})
    config = json.dumps(dict(
        max_steps=5, save_steps=2, eval_steps=1, rollout_batch_size=8, batch_size=8, max_new_tokens=8, learning_rate=3e-3,
        num_eval_prompts=8, ppo_epochs=2, num_minibatches=2, keep_resume=True, select_best="reward", adaptive_kl=True,
        target_kl=0.01, kl_horizon=100, keep_updates=True,
    ))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}

    def child(out, kill_at):
        return subprocess.run([sys.executable, str(script), world, str(out), str(kill_at), config], env=env, capture_output=True, text=True, timeout=300)

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    done = child(straight, 0)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = child(cut, 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Killed during update 4: the last save is update 2, update 3 was logged but not saved.
    assert _counters(cut)["trainer"]["step"] == 2
    assert [r["step"] for r in read_jsonl(cut / "metrics.jsonl")][-1] == 3
    assert not (cut / "model.safetensors").exists()
    steps_file = Path(str(cut) + ".steps")
    assert steps_file.read_text().split() == ["1", "2", "3", "4"]
    steps_file.unlink()
    resumed = child(cut, 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert steps_file.read_text().split() == ["3", "4", "5"]  # continued from the save, did not start over

    kept = [f"updates/update-{n}/model.safetensors" for n in range(1, 6)]  # keep_updates: outputs, rewritten alike on resume
    for name in ("model.safetensors", "resume/model.safetensors", "resume/best_policy.safetensors", *kept):
        a, b = _tensors(straight / name), _tensors(cut / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key}"
    opt_a = torch.load(straight / "resume" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(cut / "resume" / "optimizer.pt", weights_only=True)
    for index, state in opt_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, opt_b["state"][index][key])
    state_a, state_b = _counters(straight), _counters(cut)
    assert state_a["kl_controller"] == state_b["kl_controller"] and state_a["kl_controller"]["value"] != 0.05
    loop_a, loop_b = (torch.load(d / "resume" / "loop.pt", weights_only=True) for d in (straight, cut))
    assert loop_a["scheduler"] == loop_b["scheduler"] and loop_a["scheduler"]["last_epoch"] > 0
    assert state_a["trainer"]["best"] == state_b["trainer"]["best"]
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]  # noqa: E731
    assert untimed(read_jsonl(straight / "metrics.jsonl")) == untimed(read_jsonl(cut / "metrics.jsonl"))
    assert json.loads((straight / "eval.json").read_text()) == json.loads((cut / "eval.json").read_text())


def test_held_out_reward_model_scores_the_monitor_and_selects(heron_world, tmp_path):
    """A reward dir with holdout/ (the reward stage's `holdout_fraction`): the monitor scores with it too
    (`eval_holdout_reward_score`, `monitor_holdout_reward_score`) and `select_best: holdout_reward` keeps the
    update it rates best."""
    import shutil

    reward = tmp_path / "reward"
    shutil.copytree(heron_world["reward"], reward)
    with pytest.raises(ValueError, match="holdout_reward judge"):
        _run(heron_world, _config(select_best="holdout_reward"), tmp_path / "x", reward_model=reward)
    shutil.copytree(heron_world["reward"], reward / "holdout")
    out = tmp_path / "ppo"
    result = _run(heron_world, _config(select_best="holdout_reward", max_steps=4, eval_steps=1), out, reward_model=reward)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_holdout_reward_score" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    best = max(rows[1:], key=lambda r: r["eval_holdout_reward_score"])
    assert result["selected_step"] == best["step"]
    assert "monitor_holdout_reward_score" in result and "monitor_holdout_reward_score_sft" in result
