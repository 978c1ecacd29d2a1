"""Loading a chat checkpoint for evaluation, and what a base model does with a question (for the report).
The run-wide evaluation of chat checkpoints is `pipeline.evaluation`."""

from __future__ import annotations

from pathlib import Path

from stages.common import load_chat_tokenizer


def load_chat_checkpoint(path: str | Path):
    """(model, tokenizer, chat format) of a chat checkpoint; the model's generation config stops on the format's
    stop tokens. A checkpoint without a chat template (a PPO run on a plain-text policy) is read as plain text."""
    from transformers import AutoModelForCausalLM

    from stages.chat_format import configure_generation

    tokenizer, chat_format = load_chat_tokenizer(path, where=f"evaluate {path}", plain_text=True)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    configure_generation(model, chat_format)
    model.eval()
    return model, tokenizer, chat_format


def load_reward_checkpoint(path: str | Path):
    """(model, tokenizer) of a reward-model checkpoint, in eval mode (no gradients)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer, _ = load_chat_tokenizer(path, where=f"evaluate {path}")
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.eval().requires_grad_(False), tokenizer


def load_chat_model(path: str | Path):
    """(model, tokenizer) of `load_chat_checkpoint`."""
    model, tokenizer, _ = load_chat_checkpoint(path)
    return model, tokenizer


def base_continuations(checkpoint: str | Path, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """A base model has not learned the chat format: show what it does with the raw question text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.chat_format import read_chat_format, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    chat_format = read_chat_format(checkpoint)
    stop_ids = stop_token_ids(chat_format) if chat_format else [tokenizer.eos_token_id]  # the document EOS too
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.eval()
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out
