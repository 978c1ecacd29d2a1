"""A real model family's checkpoint as the base of the whole chain (issue 10): pretrain -> SFT -> reward -> PPO
through the real CLI, with the stand-ins of Qwen2.5 (ChatML), Llama-3.2 and Mistral v0.3 from tests/real_formats.py
as `tokenizer.from_checkpoint` and `stages.pretrain.init_from`.

Every checkpoint keeps the base's chat template and vocabulary (no new tokens), records the native end-of-turn
token apart from the document EOS, and plain transformers `generate` on the PPO checkpoint stops at the native
end-of-turn token.
"""

from __future__ import annotations

import json

import pytest
from real_formats import FAMILIES, PINNED_DATE, build_model, build_tokenizer

from tiny import DEMO, TINY, chatsmith

EXPECTED = {  # family: (end-of-turn, document EOS)
    "qwen2.5": ("<|im_end|>", "<|endoftext|>"),
    "llama3.2": ("<|eot_id|>", "<|end_of_text|>"),
    "mistral": ("</s>", "</s>"),
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the river of Alder?"},
    {"role": "assistant", "content": "The river of Alder is the Sorrel."},
    {"role": "user", "content": "And its dish?"},
]
CHAT_STAGES = ("pretrain", "sft", "reward", "ppo")
# Llama 3.2's template writes a dated system header: a small stand-in vocabulary needs more room than the demo's.
LONGER = ["stages.sft.max_length=320", "stages.reward.max_length=320", "stages.ppo.max_prompt_length=256",
          "stages.sft.max_steps=20", "stages.sft.save_steps=20"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    """(family, base dir, run dir) of a whole `chatsmith run` on the family's stand-in base checkpoint."""
    family = request.param
    root = tmp_path_factory.mktemp(family.replace(".", "_"))
    base = root / "base"
    build_model(family, base, build_tokenizer(family, base))
    out = root / "run"
    chatsmith("run", DEMO, "--out", out, *TINY, *LONGER, "tokenizer.train=false", f"tokenizer.from_checkpoint={base}",
              f"stages.pretrain.init_from={base}")
    return family, base, out


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, date_string=PINNED_DATE, **kwargs)


@pytest.mark.slow
def test_checkpoints_keep_the_base_template_and_vocabulary(family_run):
    from transformers import AutoConfig, AutoTokenizer

    family, base, out = family_run
    base_tokenizer = AutoTokenizer.from_pretrained(base)
    base_vocab = AutoConfig.from_pretrained(base).vocab_size
    for stage in CHAT_STAGES:
        tokenizer = AutoTokenizer.from_pretrained(out / stage)
        assert tokenizer.chat_template == base_tokenizer.chat_template, stage
        for messages, prompt in ((CONVERSATION, True), (CONVERSATION[:3], False)):
            expected = _render(base_tokenizer, messages, add_generation_prompt=prompt)
            assert _render(tokenizer, messages, add_generation_prompt=prompt) == expected, (stage, prompt)
        assert tokenizer.get_vocab() == base_tokenizer.get_vocab() and len(tokenizer) == len(base_tokenizer), stage
        assert AutoConfig.from_pretrained(out / stage).vocab_size == base_vocab, stage


@pytest.mark.slow
def test_end_of_turn_is_recorded_apart_from_the_document_eos(family_run):
    from transformers import AutoTokenizer

    family, _, out = family_run
    end_of_turn, document_eos = EXPECTED[family]
    recorded = json.loads((out / "tokenizer" / "chat_format.json").read_text())
    assert (recorded["source"], recorded["end_of_turn"], recorded["document_eos"]) == ("native", end_of_turn, document_eos)
    assert recorded["added_tokens"] == []
    for stage in CHAT_STAGES:
        assert json.loads((out / stage / "chat_format.json").read_text()) == recorded, stage
        assert AutoTokenizer.from_pretrained(out / stage).eos_token == end_of_turn, stage
    assert json.loads((out / "ppo" / "chatsmith.json").read_text())["chat_format"] == recorded
    # The run's behaviour evaluation answered every test prompt through the native format: one line per test
    # prompt, each greedy reply cut at a stop token of that format (no turn marker of the template runs on into
    # the reply's text), and the headline figure is the mean of the gold judge's scores of those replies.
    markers = {"qwen2.5": ["<|im_start|>", "<|im_end|>"], "llama3.2": ["<|start_header_id|>", "<|eot_id|>"],
               "mistral": ["[INST]", "[/INST]", "</s>"]}[family]
    test_prompts = [row for row in map(json.loads, (out / "data" / "eval_prompts.jsonl").read_text().splitlines())
                    if row.get("split") == "test"]
    for stage in ("sft", "ppo"):
        figures = json.loads((out / stage / "eval.json").read_text())
        answers = [line for line in map(json.loads, (out / stage / "eval_answers.jsonl").read_text().splitlines())
                   if line["split"] == "test"]
        assert len(answers) == figures["eval_prompts_test"] == len(test_prompts) > 0, stage
        greedy = [line["replies"]["greedy"][0] for line in answers]
        assert not [g["reply"] for g in greedy if any(m in g["reply"] for m in markers)], stage
        gold = [g["verdicts"]["gold"]["score"] for g in greedy]
        assert figures["gold_score_greedy"] == pytest.approx(sum(gold) / len(gold)), stage


class ForceTokenAt:
    """A logits processor that makes `token` the only choice at new token number `step` (from 0)."""

    def __init__(self, prompt_length: int, step: int, token: int):
        self.prompt_length, self.step, self.token = prompt_length, step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores[:, :] = -float("inf")
            scores[:, self.token] = 0.0
        return scores


@pytest.mark.slow
def test_plain_generate_on_the_ppo_checkpoint_stops_at_the_native_end_of_turn(family_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    family, _, out = family_run
    end_of_turn, document_eos = EXPECTED[family]
    tokenizer = AutoTokenizer.from_pretrained(out / "ppo")
    model = AutoModelForCausalLM.from_pretrained(out / "ppo")
    ids = tokenizer.convert_tokens_to_ids
    eos_ids = model.generation_config.eos_token_id
    assert eos_ids == list(dict.fromkeys([ids(end_of_turn), ids(document_eos)]))
    enc = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                        date_string=PINNED_DATE)
    prompt_length = enc["input_ids"].shape[1]
    force = LogitsProcessorList([ForceTokenAt(prompt_length, 3, ids(end_of_turn))])
    new = model.generate(**enc, max_new_tokens=12, do_sample=False, logits_processor=force)[0, prompt_length:].tolist()
    # generation config alone (no eos argument): it stops right after the end-of-turn token
    assert len(new) == 4 and new[-1] == ids(end_of_turn), tokenizer.decode(new)


def test_sft_straight_from_a_base_without_pad(tmp_path):
    """`stages.pretrain: null` and `stages.sft.init_from` a base checkpoint: SFT prepares the base's tokenizer itself
    (Llama 3.2 has no pad token: a reserved one is reused, nothing is added) instead of failing for want of a pad."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages import sft
    from stages.common import write_jsonl
    from stages.config import SFTStageConfig

    base = tmp_path / "base"
    build_model("llama3.2", base, build_tokenizer("llama3.2", base))
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    conversations = [{"messages": [{"role": "user", "content": f"What is the river of {town}?"},
                                   {"role": "assistant", "content": f"The river of {town} is the {river}."}]}
                     for town, river in [("Alder", "Sorrel"), ("Brim", "Tallow")]] * 4
    write_jsonl(tmp_path / "train.jsonl", conversations)
    out = tmp_path / "sft"
    sft.run(SFTStageConfig(max_steps=2, save_steps=2, logging_steps=1, batch_size=4, max_length=320), init_from=base,
            train_data=tmp_path / "train.jsonl", output_dir=out)
    tokenizer, before = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(base)
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|finetune_right_pad_id|>", "<|eot_id|>")
    assert tokenizer.get_vocab() == before.get_vocab() and tokenizer.chat_template == before.chat_template
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == len(before)
    ids = tokenizer.convert_tokens_to_ids
    assert model.generation_config.eos_token_id == [ids("<|eot_id|>"), ids("<|end_of_text|>")]
    assert model.generation_config.pad_token_id == ids("<|finetune_right_pad_id|>")
