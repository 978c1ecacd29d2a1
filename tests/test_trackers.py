"""Experiment trackers (`report_to`): the own loops (pretrain, PPO) send metrics.jsonl's rows to accelerate's trackers
under the same names, the TRL stages (SFT, reward, DPO) through their Trainer's callbacks; TensorBoard events land
under the stage dir and TensorBoard's own reader finds there the values metrics.jsonl has; a tracker that is not
installed is refused when the config is read, with the pip command that installs it."""

from __future__ import annotations

import json

import pytest
from judges import monitor

from stages.common import write_jsonl

TRACKER_ENV = ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def own_tracker_environment(monkeypatch):
    """The stages point the trackers through these variables: start without them, leave none behind."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the TensorBoard event files in `directory`, read back by TensorBoard's own reader
    (`EventAccumulator`, from the `tensorboard` package users install with the extra): {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _corpus(tmp_path, tokenizer_dir):
    """A `corpus.json` of tiny documents, as `pipeline.data.ensure_corpus` writes it."""
    from stages.common import write_json_atomic
    from stages.data import as_sources, tokenize_sources
    from tiny_models import TINY_TEXT

    write_jsonl(tmp_path / "docs.jsonl", [{"text": f"{text} ({i})"} for i, text in enumerate(TINY_TEXT)])
    sources = as_sources(str(tmp_path / "docs.jsonl"))
    shards = tokenize_sources(sources, tokenizer_dir, tmp_path / "cache", num_workers=1, eval_fraction=0.1, progress=False)
    write_json_atomic(tmp_path / "corpus.json", {
        "cache_dir": str(tmp_path / "cache"), "keys": shards.keys, "weights": [s.weight for s in sources],
        "sources": [s.model_dump(mode="json") for s in sources], "eos_token_id": shards.eos_token_id})
    return tmp_path / "corpus.json"


def test_pretrain_sends_metrics_rows_to_tensorboard(tiny_assets, tmp_path):
    from stages import pretrain
    from stages.config import ModelArch, PretrainConfig

    config = PretrainConfig(model=ModelArch(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=64),
                            seq_len=32, batch_size=4, max_steps=4, logging_steps=2, save_steps=100, eval_fraction=0.1,
                            report_to=["tensorboard"])
    out = tmp_path / "run" / "pretrain"
    pretrain.run(config, tokenizer_dir=tiny_assets["tokenizer"], corpus=_corpus(tmp_path, tiny_assets["tokenizer"]),
                 output_dir=out)

    rows = _rows(out / "metrics.jsonl")
    numeric = {k for row in rows for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
    scalars = _scalars(out / "tracking" / "pretrain")
    assert set(scalars) == numeric and {"loss", "lr", "time_s"} <= numeric
    for tag, points in scalars.items():
        expected = [(row["step"], row[tag]) for row in rows if tag in row]
        assert [step for step, _ in points] == [step for step, _ in expected] == [2, 4]
        assert [value for _, value in points] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_sft_writes_tensorboard_events_under_its_stage_dir(tiny_assets, tmp_path):
    """The TRL stages report through their Trainer's callbacks (TensorBoard names them `train/<metrics.jsonl name>`)."""
    from stages import sft
    from stages.config import SFTStageConfig

    conversation = {"messages": [{"role": "user", "content": "What is the river of Alder?"},
                                 {"role": "assistant", "content": "The river of Alder is the Sorrel."}]}
    write_jsonl(tmp_path / "train.jsonl", [conversation] * 8)
    config = SFTStageConfig(max_steps=2, save_steps=100, logging_steps=1, batch_size=4, report_to=["tensorboard"])
    out = tmp_path / "run" / "sft"
    sft.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl", output_dir=out)

    assert list((out / "tracking" / "sft").glob("events.out.tfevents.*"))
    losses = [(row["step"], row["loss"]) for row in _rows(out / "metrics.jsonl") if "loss" in row]
    points = _scalars(out / "tracking" / "sft")["train/loss"]
    assert [step for step, _ in points] == [step for step, _ in losses] == [1, 2]
    assert [value for _, value in points] == pytest.approx([value for _, value in losses], rel=1e-4)


def _same_points(points, rows, key):
    """TensorBoard's points of one scalar are metrics.jsonl's (step, value) of `key`, in order."""
    expected = [(row["step"], row[key]) for row in rows if key in row]
    assert expected, f"metrics.jsonl has no {key}"
    assert [step for step, _ in points] == [step for step, _ in expected]
    assert [value for _, value in points] == pytest.approx([value for _, value in expected], rel=1e-5)


def test_reward_writes_tensorboard_events_under_its_stage_dir(tiny_assets, tmp_path):
    from stages import config as stage_config
    from stages.rlhf import reward

    pair = {"prompt": [{"role": "user", "content": "What is the emblem of Alder?"}],
            "chosen": [{"role": "assistant", "content": "It is a heron."}], "rejected": [{"role": "assistant", "content": "A lynx."}]}
    write_jsonl(tmp_path / "train.jsonl", [pair] * 8)
    config = stage_config.RewardStageConfig(max_steps=2, save_steps=100, logging_steps=1, batch_size=4, max_length=64,
                                            report_to=["tensorboard"])
    out = tmp_path / "run" / "reward"
    reward.run(config, init_from=tiny_assets["policy"], train_data=tmp_path / "train.jsonl", output_dir=out)

    rows = _rows(out / "metrics.jsonl")
    scalars = _scalars(out / "tracking" / "reward")
    _same_points(scalars["train/loss"], rows, "loss")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]


def test_ppo_sends_metrics_rows_to_tensorboard(tiny_assets, tmp_path):
    from stages.config import PPOConfig
    from stages.rlhf import ppo

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"What is the emblem of Alder? ({i})"} for i in range(8)])
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "What is the emblem of Brim?", "id": 0, "split": "dev"}])
    config = PPOConfig(max_steps=2, save_steps=100, eval_steps=2, rollout_batch_size=4, batch_size=4, max_new_tokens=6,
                       num_eval_prompts=1, ppo_epochs=1, report_to=["tensorboard"])
    out = tmp_path / "run" / "ppo"
    ppo.run(config, policy=tiny_assets["policy"], reward_model=tiny_assets["reward"], prompts=tmp_path / "prompts.jsonl",
            output_dir=out, monitor=monitor(tmp_path / "eval.jsonl", reward_model=tiny_assets["reward"]))

    rows = _rows(out / "metrics.jsonl")
    numeric = {k for row in rows for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    scalars = _scalars(out / "tracking" / "ppo")
    assert set(scalars) == numeric and {"policy_loss", "kl", "reward_raw", "eval_reward_score"} <= numeric
    for key in numeric:
        _same_points(scalars[key], rows, key)
    assert [step for step, _ in scalars["policy_loss"]] == [1, 2]


def test_dpo_writes_tensorboard_events_under_its_stage_dir(tiny_assets, tmp_path):
    from pipeline.registry import RL_CONFIGS
    from stages.rlhf import alternatives

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "What is the emblem of Alder?"}] * 4)
    write_jsonl(tmp_path / "comparisons.jsonl", [
        {"prompt": [{"role": "user", "content": "What is the emblem of Alder?"}],
         "chosen": [{"role": "assistant", "content": "It is a heron."}], "rejected": [{"role": "assistant", "content": "A lynx."}]}] * 8)
    config = RL_CONFIGS["dpo"](algorithm="dpo", max_steps=2, save_steps=100, logging_steps=1, batch_size=4, max_new_tokens=6,
                               num_eval_prompts=1, report_to=["tensorboard"])
    out = tmp_path / "run" / "dpo"
    alternatives.run(config, policy=tiny_assets["policy"], reward_model=None, prompts=tmp_path / "prompts.jsonl",
                     output_dir=out, comparisons=tmp_path / "comparisons.jsonl", monitor=monitor())

    rows = _rows(out / "metrics.jsonl")
    scalars = _scalars(out / "tracking" / "dpo")
    _same_points(scalars["train/loss"], rows, "loss")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]


def test_a_missing_tracker_is_refused_with_its_pip_command(monkeypatch):
    import importlib.util

    from pipeline.recipe import RecipeError, load_recipe
    from tiny import DEMO

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in {"wandb", "mlflow"} else real_find_spec(name, *args))
    with pytest.raises(RecipeError) as refused:
        load_recipe(DEMO, ["stages.sft.report_to=[tensorboard, wandb]"])
    message = str(refused.value)
    assert "stages.sft.report_to: wandb is not installed: pip install 'chatsmith[wandb]'" in message
    assert len(message.splitlines()) == 1

    from stages.config import PPOConfig

    with pytest.raises(ValueError, match=r"wandb and mlflow are not installed: pip install 'chatsmith\[wandb,mlflow\]'"):
        PPOConfig(report_to=["wandb", "mlflow"])
    assert PPOConfig(report_to=["tensorboard", "tensorboard"]).report_to == ["tensorboard"]
    assert PPOConfig().report_to == []


def test_metrics_log_sends_each_rows_numbers_and_finishes_the_trackers_once(tmp_path):
    from stages.common import MetricsLog

    class Tracker:
        finished = 0

        def finish(self):
            self.finished += 1

    class Accelerator:
        def __init__(self):
            self.trackers, self.logged = [Tracker()], []

        def log(self, values, step):
            self.logged.append((step, values))

    accelerator = Accelerator()
    log = MetricsLog(tmp_path / "metrics.jsonl", accelerator=accelerator)
    row = log.log(3, loss=1.5, lr=0.001, warnings=["entropy collapse"], stopped=False, note="x")
    assert accelerator.logged == [(3, {"loss": 1.5, "lr": 0.001, "time_s": row["time_s"]})]
    assert _rows(tmp_path / "metrics.jsonl") == [row]
    del log  # the end of a stage function: the trackers are finished without a close() call
    assert accelerator.trackers[0].finished == 1

    other_rank = MetricsLog(tmp_path / "other.jsonl", enabled=False, accelerator=accelerator)
    other_rank.log(4, loss=1.0)
    other_rank.close()
    closed = MetricsLog(tmp_path / "metrics.jsonl", accelerator=accelerator)
    closed.close()
    closed.close()
    assert len(accelerator.logged) == 1 and accelerator.trackers[0].finished == 2
