"""`chatsmith plan`: parameter counts from configs on the meta device, DeepSpeed's memory estimators,
tokens and time at a stated MFU — for the tiny CPU recipe and a real-model recipe whose paths don't exist here."""

import json

from helpers import DEMO, REPO, TINY, cli


def test_plan_tiny_recipe_counts_the_real_model(tmp_path):
    from pipeline.plan import plan
    from pipeline.recipe import load_recipe
    from stages.pretrain import build_model

    result = json.loads(cli("plan", DEMO, "--json", "--gpu", "A100-80GB", "--mfu", "0.5").stdout)
    recipe = load_recipe(DEMO)
    pre = result["stages"]["pretrain"]
    cfg = recipe.stages.pretrain
    assert pre["tokens"] == cfg.max_steps * cfg.batch_size * cfg.seq_len
    assert pre["flops"] == 6 * pre["params"] * pre["tokens"]
    assert abs(pre["hours"] * 3600 - pre["flops"] / (312e12 * 0.5)) < 1e-6
    assert result["stages"]["ppo"]["trained_params"] == 2 * pre["params"]  # policy + value

    class _Tok:  # build_model needs len(tokenizer) and its special ids
        eos_token_id, pad_token_id = 0, 1

        def __len__(self):
            return recipe.tokenizer.vocab_size

    real = sum(p.numel() for p in build_model(cfg, _Tok()).parameters())
    assert pre["params"] == real
    # two processes under ZeRO-2 halve the optimizer-state share (DeepSpeed's own formula)
    two = plan(load_recipe(DEMO, ["launch.config=zero2", "launch.num_processes=2"]), gpu="A100-80GB", mfu=0.5)
    p = pre["params"]
    assert round(two["stages"]["pretrain"]["model_states_gib_per_gpu"] * 2**30) == 2 * p + int(18 * p / 2)


def test_plan_real_model_recipe_uses_known_sizes():
    result = cli("plan", REPO / "recipes" / "qwen2.5-0.5b-8gpu.yaml", "--gpu", "H100-80GB", "--mfu", "0.4")
    text = result.stdout
    assert "known size of qwen2.5-0.5b" in text and "not found here" in text
    assert "estimate_zero2_model_states_mem_needs" in text
    data = json.loads(cli("plan", REPO / "recipes" / "qwen2.5-0.5b-8gpu.yaml", "--json", "launch.config=zero3").stdout)
    pre = data["stages"]["pretrain"]
    assert pre["params"] == 494_032_768 and data["gpus"] == 8
    assert pre["tokens"] == 2000 * 8 * 4 * 8 * 2048  # steps x batch x accumulation x GPUs x seq_len
    assert "estimate_zero3" in pre["model_states_how"] and pre["fits"]
    bad = cli("plan", DEMO, "--gpu", "TPU", check=False)
    assert bad.returncode == 2 and "unknown GPU" in bad.stderr


def _rl_plan(*overrides):
    from pipeline.plan import plan
    from pipeline.recipe import load_recipe

    recipe = load_recipe(DEMO, ["launch.num_processes=2", *overrides])
    result = plan(recipe, gpu="A100-80GB", mfu=0.5)
    return recipe.stages.ppo, result["stages"]["pretrain"]["params"], result["stages"]["ppo"]


def test_plan_ppo_counts_rollouts_and_a_value_model():
    cfg, params, ppo = _rl_plan("stages.ppo.max_steps=10", "stages.ppo.rollout_batch_size=8")
    tokens = 10 * 8 * 2 * (cfg.max_prompt_length + cfg.max_new_tokens)  # steps x prompts x processes x (prompt + reply)
    assert ppo["algorithm"] == "ppo" and ppo["tokens"] == tokens
    assert (ppo["trained_params"], ppo["frozen_params"]) == (2 * params, 2 * params)  # policy + value; reference + reward
    assert ppo["flops"] == 2 * params * tokens + 6 * params * tokens + cfg.ppo_epochs * 6 * 2 * params * tokens


def test_plan_grpo_and_rloo_count_every_generation_and_no_value_model():
    for algorithm in ("grpo", "rloo"):
        # the section replaced whole: the demo recipe's PPO-only keys are not GRPO's or RLOO's
        cfg, params, stage = _rl_plan(f"stages.ppo={{algorithm: {algorithm}, max_steps: 10, rollout_batch_size: 8, num_generations: 4}}")
        tokens = 10 * 8 * 4 * 2 * (cfg.max_prompt_length + cfg.max_new_tokens)  # x num_generations, x processes
        assert stage["algorithm"] == algorithm and stage["tokens"] == tokens
        assert (stage["trained_params"], stage["frozen_params"]) == (params, 2 * params)  # no value model
        assert stage["flops"] == 2 * params * tokens + 4 * params * tokens + cfg.ppo_epochs * 6 * params * tokens


def test_plan_dpo_counts_chosen_and_rejected_of_every_batch():
    cfg, params, dpo = _rl_plan("stages.ppo={algorithm: dpo, max_steps: 10, batch_size: 4, gradient_accumulation_steps: 3}")
    length = cfg.max_prompt_length + cfg.max_new_tokens
    assert dpo["algorithm"] == "dpo" and dpo["tokens"] == 10 * 4 * 3 * 2 * 2 * length  # x processes, x (chosen, rejected)
    assert (dpo["trained_params"], dpo["frozen_params"]) == (params, params)  # the policy; its frozen reference
    assert dpo["flops"] == 8 * params * dpo["tokens"]  # 6N trained + 2N the reference's forward, per token
