"""What every stage shares: loading a tokenizer with its chat format, JSON/JSONL files, metrics logging,
batched generation.

The chat format itself (chatsmith's template, a checkpoint's native one, `chat_format.json`) is
`stages.chat_format`'s; checkpoints and resume state are `stages.checkpoint`'s; process groups and
DeepSpeed are `stages.distributed`'s.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Optional

from stages.chat_format import ChatFormat, ChatFormatError, check_tokenizer, plain_text_format, prepare_tokenizer, read_chat_format


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


def load_chat_tokenizer(path: str | os.PathLike, *, where: str, trust_remote_code: bool = False,
                        plain_text: bool = False) -> tuple[Any, ChatFormat]:
    """The tokenizer of a stage's input or output dir and its `ChatFormat`, checked against `chat_format.json`.

    A dir without `chat_format.json` (a checkpoint from elsewhere) gets its format derived as the tokenizer stage
    would (`prepare_tokenizer`), which may only set the EOS to the end-of-turn token and reuse a spare special
    token as pad: a tokenizer that would need new tokens is refused. With `plain_text`, a tokenizer without a chat
    template is accepted as is (prompts are text, a reply ends at its EOS: `plain_text_format`)."""
    from transformers import AutoTokenizer

    chat_format = read_chat_format(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if chat_format is not None:
        check_tokenizer(tokenizer, chat_format, where=where)
        if chat_format.source != "plain" or not plain_text:
            check_chat_format(tokenizer, where=where)
        return tokenizer, chat_format
    if not tokenizer.chat_template:
        if plain_text:
            return tokenizer, plain_text_format(tokenizer, where=where)
        raise ChatFormatError(f"{where}: the tokenizer has no chat template")
    tokenizer, chat_format = prepare_tokenizer(path, trust_remote_code=trust_remote_code)
    if chat_format.added_tokens:
        raise ChatFormatError(f"{where}: the tokenizer would need new tokens {list(chat_format.added_tokens)} (and "
                              "the model new embeddings); prepare it with the tokenizer stage or fine-tune it with SFT")
    return tokenizer, chat_format


def load_tokenizer(path: str | os.PathLike, *, where: str, trust_remote_code: bool = False):
    """`load_chat_tokenizer` without the format (for callers that only render and tokenize)."""
    return load_chat_tokenizer(path, where=where, trust_remote_code=trust_remote_code)[0]


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

    On resume, lines past the resumed step are dropped first, so the file reads as one run.
    With an `accelerator` whose trackers were started (`make_accelerator(report_to=...)`), the numbers of each row
    also go to them, under the same names at the same step. The trackers are finished by `close`, else when the log
    goes away (the end of the stage function) or at exit: not by `accelerator.end_training`, which would also end
    the process group that saving the model still needs."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int = 0, enabled: bool = True, accelerator=None):
        self.path = Path(path)
        self.enabled = enabled
        self.start = time.perf_counter()
        self.time_offset = 0.0
        self.accelerator = accelerator if enabled and accelerator is not None and accelerator.trackers else None
        self._finish = None
        if self.accelerator is not None:
            self._finish = weakref.finalize(self, _finish_trackers, list(self.accelerator.trackers))
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
        if self.accelerator is not None:
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            numbers.pop("step", None)
            self.accelerator.log(numbers, step=step)
        return row

    def close(self) -> None:
        """Finish the trackers (the file needs no closing)."""
        if self._finish is not None:
            self._finish()
        self.accelerator = None


def _finish_trackers(trackers: list) -> None:
    for tracker in trackers:
        tracker.finish()


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


def default_stop_ids(model, tokenizer) -> list[int]:
    """Stop ids when a caller gives none: the tokenizer's EOS (the end-of-turn token), then the EOS ids of the
    model's generation config (where `configure_generation` put the document EOS of a native chat format)."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [] if configured is None else [configured]
    return list(dict.fromkeys([tokenizer.eos_token_id, *configured]))


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
    stop_ids: Optional[list[int]] = None,
) -> list[dict]:
    """Batched, KV-cached generation with left padding. Returns per conversation
    `{"reply": str, "ended": bool}` where `ended` means a stop id was emitted.

    `stop_ids`: the chat format's `stop_token_ids` (end-of-turn, then the document EOS); None means
    `default_stop_ids`. The reply is cut at the first stop id, then pad tokens are dropped (Qwen's pad is its
    document EOS: dropping pads first would hide where the reply stopped)."""
    import torch

    stop_ids = list(stop_ids) if stop_ids is not None else default_stop_ids(model, tokenizer)
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
                    eos_token_id=stop_ids,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for row in new_tokens.tolist():
                stop = next((i for i, token in enumerate(row) if token in stop_ids), None)
                if stop is not None:
                    row = row[:stop]
                row = [t for t in row if t != tokenizer.pad_token_id]
                results.append({"reply": tokenizer.decode(row, skip_special_tokens=True).strip(), "ended": stop is not None})
    finally:
        tokenizer.padding_side = previous_side
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return results
