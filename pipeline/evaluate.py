"""Loading a chat checkpoint for evaluation, and what a base model does with a question (for the report).
The demo's behaviour evaluation with its gold judge is `pipeline.demo.behaviour`."""

from __future__ import annotations

from pathlib import Path

from stages.common import load_tokenizer


def load_chat_model(path: str | Path):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, where=f"evaluate {path}")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.eval()
    return model, tokenizer


def base_continuations(checkpoint: str | Path, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """A base model has not learned the chat format: show what it does with the raw question text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    model.eval()
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out
