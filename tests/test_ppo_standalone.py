"""`chatsmith stage ppo` on its own: a policy, a reward model and a prompts file are all it needs."""

import json

import pytest

from stages.common import write_jsonl
from tiny import DEMO, chatsmith

pytestmark = pytest.mark.slow  # whole `chatsmith stage ppo` runs through the CLI


def test_standalone_ppo_needs_nothing_else_from_the_run_dir(tiny_assets, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"What is the river of Alder? ({i})"} for i in range(12)]
                + [{"messages": [{"role": "user", "content": f"Hello {i}"}]} for i in range(12)])
    out = tmp_path / "run"
    chatsmith("stage", "ppo", DEMO, "--out", out, "data.source=files",
              f"stages.ppo.policy={tiny_assets['policy']}", f"stages.ppo.reward_model={tiny_assets['reward']}",
              f"stages.ppo.prompts={prompts}", "stages.ppo.rollout_batch_size=4", "stages.ppo.max_new_tokens=8",
              "stages.ppo.ppo_epochs=2", "stages.ppo.num_minibatches=2", "stages.ppo.max_steps=2",
              "stages.ppo.eval_steps=1", "stages.ppo.num_eval_prompts=4", "stages.ppo.batch_size=4")
    evals = json.loads((out / "ppo" / "eval.json").read_text())
    assert {"monitor_kl_to_sft", "monitor_end_of_turn_rate", "monitor_reward_score"} <= set(evals)  # no eval prompts: the monitor only
    assert not (out / "tokenizer").exists() and not (out / "data" / "pretrain.jsonl").exists()
    manifest = json.loads((out / "manifest.json").read_text())["stages"]["ppo"]
    assert manifest["status"] == "done"
    assert manifest["inputs"]["policy"]["path"] == str(tiny_assets["policy"])
    assert manifest["inputs"]["prompts"]["sha256"]
    rows = [json.loads(l) for l in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward_raw" in r] == [1, 2]


def test_standalone_ppo_on_a_policy_without_chat_template_completes_with_its_evaluation(tiny_assets, tmp_path):
    """README: "a checkpoint without a chat template gets the prompt text as is". The reported bug: the stage
    trained, then the run's evaluation refused the checkpoint (`the tokenizer has no chat template`)."""
    import shutil

    from transformers import AutoTokenizer

    from tiny import TINY

    policy = tmp_path / "plain-policy"
    shutil.copytree(tiny_assets["policy"], policy)
    (policy / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(policy)
    assert not AutoTokenizer.from_pretrained(policy).chat_template
    out = tmp_path / "run"
    # the demo world's data: after the stage, the run evaluates the checkpoint's behaviour with the gold judge
    chatsmith("stage", "ppo", DEMO, "--out", out, *TINY, f"stages.ppo.policy={policy}",
              f"stages.ppo.reward_model={tiny_assets['reward']}", "stages.ppo.max_steps=2", "stages.ppo.rollout_batch_size=4",
              "stages.ppo.max_new_tokens=8", "stages.ppo.eval_steps=1", "stages.ppo.num_eval_prompts=4")
    evals = json.loads((out / "ppo" / "eval.json").read_text())
    assert {"kl_to_sft", "monitor_end_of_turn_rate", "gold_score_greedy", "gold_minus_sft_greedy", "end_of_turn_rate_greedy"} <= set(evals)
    assert json.loads((out / "manifest.json").read_text())["stages"]["ppo"]["status"] == "done"
    answers = [json.loads(l) for l in (out / "ppo" / "eval_answers.jsonl").read_text().splitlines()]
    assert answers and all(isinstance(a["greedy"], str) for a in answers)
    saved = AutoTokenizer.from_pretrained(out / "ppo")
    assert not saved.chat_template and saved.get_vocab() == tokenizer.get_vocab()  # still plain text, nothing added
    recorded = json.loads((out / "ppo" / "chat_format.json").read_text())
    assert (recorded["source"], recorded["end_of_turn"]) == ("plain", tokenizer.eos_token)


def test_standalone_ppo_with_a_template_less_policy_and_reward_model_finishes_its_evaluation(tiny_assets, tmp_path):
    """Issue 15's report: policy and reward model both without a chat template. Training scored plain text (prompt
    text, then the reply and its EOS); the closing evaluation's reward judge used to insist on a template and failed
    after every update had trained. Now the one reward-model judge reads a plain-text model as training did."""
    import shutil

    from transformers import AutoTokenizer

    plain = {}
    for name in ("policy", "reward"):
        plain[name] = tmp_path / f"plain-{name}"
        shutil.copytree(tiny_assets[name], plain[name])
        (plain[name] / "chat_template.jinja").unlink(missing_ok=True)
        (plain[name] / "chat_format.json").unlink(missing_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(plain[name])
        tokenizer.chat_template = None
        tokenizer.save_pretrained(plain[name])
        assert not AutoTokenizer.from_pretrained(plain[name]).chat_template
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"What is the river of Alder? ({i})"} for i in range(12)])
    eval_prompts = tmp_path / "eval_prompts.jsonl"
    write_jsonl(eval_prompts, [{"prompt": f"Which river is Brim on? ({i})", "id": f"e{i}", "split": split}
                               for i, split in enumerate(["dev"] * 4 + ["test"] * 4)])
    out = tmp_path / "run"
    chatsmith("stage", "ppo", DEMO, "--out", out, "data.source=files", f"data.eval_prompts={eval_prompts}",
              f"stages.ppo.policy={plain['policy']}", f"stages.ppo.reward_model={plain['reward']}",
              f"stages.ppo.prompts={prompts}", "stages.ppo.rollout_batch_size=4", "stages.ppo.max_new_tokens=8",
              "stages.ppo.max_steps=2", "stages.ppo.eval_steps=1", "stages.ppo.num_eval_prompts=4", "stages.ppo.batch_size=4")
    evals = json.loads((out / "ppo" / "eval.json").read_text())
    # the closing evaluation ran on the test prompts, judged by the (plain-text) reward model, paired with SFT
    assert evals["eval_prompts_test"] == 4 and evals["eval_prompts_dev"] == 4
    assert {"reward_score_greedy", "reward_minus_sft_greedy", "kl_to_sft", "monitor_reward_score"} <= set(evals)
    assert json.loads((out / "manifest.json").read_text())["stages"]["ppo"]["status"] == "done"
