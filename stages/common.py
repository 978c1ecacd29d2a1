"""What every stage shares: the chat format, JSON/JSONL files, metrics logging, batched generation.

Checkpoints and resume state are `stages.checkpoint`'s; process groups and DeepSpeed are
`stages.distributed`'s.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

# The chat format chatsmith sets when it trains a tokenizer (or a base tokenizer lacks one).
# `{% generation %}` marks the assistant's tokens for TRL's assistant-only loss; the end-of-turn
# token sits inside it, so the model is trained to emit it and generation stops on it.
END_OF_TURN = "<|end|>"
PAD = "<|pad|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [END_OF_TURN, PAD, *ROLE_TOKENS.values()]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


class ChatFormatError(ValueError):
    """The tokenizer's chat template or end-of-turn token is not what earlier stages set."""


def check_chat_format(tokenizer, *, where: str) -> int:
    """Check the tokenizer can render chats and knows its end-of-turn token; return its id.

    The end-of-turn token is `tokenizer.eos_token`: the token SFT trains the model to emit is the
    token generation stops on."""
    if not tokenizer.chat_template:
        raise ChatFormatError(f"{where}: the tokenizer has no chat template")
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ChatFormatError(f"{where}: the tokenizer has no EOS (end-of-turn) token")
    if tokenizer.pad_token_id is None:
        raise ChatFormatError(f"{where}: the tokenizer has no pad token")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
    )
    if tokenizer.eos_token not in rendered:
        raise ChatFormatError(
            f"{where}: the chat template does not close an assistant turn with the EOS token "
            f"{tokenizer.eos_token!r}; generation would not stop where training taught it to"
        )
    return tokenizer.eos_token_id


def load_tokenizer(path: str | os.PathLike, *, where: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    check_chat_format(tokenizer, where=where)
    return tokenizer


def torch_dtype(bf16: bool):
    """bf16 where a GPU supports it; fp32 otherwise (CPU runs are fp32, exact and deterministic)."""
    import torch

    if bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if bf16:
        import warnings

        warnings.warn("bf16 requested but no GPU with bf16 is available: training in fp32")
    return torch.float32


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`, with `step` and `time_s`.

    On resume, lines past the resumed step are dropped first, so the file reads as one run."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.start = time.perf_counter()
        self.time_offset = 0.0
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():
            rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            self.time_offset = rows[-1]["time_s"] if rows else 0.0
            write_jsonl(self.path, rows)
        elif self.path.exists():
            self.path.unlink()

    def log(self, step: int, **values: Any) -> dict:
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        row["time_s"] = round(self.time_offset + time.perf_counter() - self.start, 3)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        return row


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before its reply: the chat template with the generation prompt,
    or, for a tokenizer without a chat template, the last user message as is."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return messages[-1]["content"]


def prompt_messages(row: dict) -> list[dict]:
    """A prompt record (`{"prompt": str}` or `{"messages": [...]}`) as a list of chat messages."""
    if "messages" in row:
        messages = [m for m in row["messages"]]
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return messages
    if "prompt" in row:
        prompt = row["prompt"]
        return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    raise KeyError("a prompt record needs 'prompt' or 'messages'")


def generate_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[dict]:
    """Batched, KV-cached generation with left padding. Returns per conversation
    `{"reply": str, "ended": bool}` where `ended` means the end-of-turn token was emitted."""
    import torch

    eos_id = tokenizer.eos_token_id
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    results = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [render_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_k=top_k if do_sample else None,
                    top_p=top_p if do_sample else None,
                    eos_token_id=eos_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for row in new_tokens.tolist():
                ended = eos_id in row
                if ended:
                    row = row[: row.index(eos_id)]
                row = [t for t in row if t != tokenizer.pad_token_id]
                results.append({"reply": tokenizer.decode(row, skip_special_tokens=True).strip(), "ended": ended})
    finally:
        tokenizer.padding_side = previous_side
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return results
