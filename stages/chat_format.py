"""Chat formats: keep a checkpoint's own chat template, find its end-of-turn token, mask the assistant's tokens.

In:  a tokenizer (or a local checkpoint dir) and conversations `[{"role": ..., "content": ...}, ...]`.
Out: - `prepare_tokenizer` -> the same tokenizer, changed only where it must be (EOS = the end-of-turn token
       the template closes assistant turns with; a pad token when it had none, reusing an unused special
       token when there is one), and its `ChatFormat`: end-of-turn vs document EOS, pad, how masks are made.
     - `tokenize_conversations` -> rows `{"input_ids", "assistant_masks"}` that TRL's SFTTrainer trains on as
       they are (labels -100 where the mask is 0): the assistant's replies and their end-of-turn token.
     - `write_chat_format` / `read_chat_format`: `chat_format.json` beside the tokenizer files, so later
       stages know the document EOS that the tokenizer's EOS no longer names.
     - `stop_token_ids` / `configure_generation`: what generation stops on (end-of-turn and document EOS).
     - chatsmith's own template and tokens (`CHAT_TEMPLATE`, `SPECIAL_TOKENS`), and `plain_text_format` for an
       RL policy without a chat template.

Masks without `{% generation %}` (real templates have none): render the conversation cut before each assistant
turn (with the generation prompt) and cut after it, and diff the token ids against the whole conversation.
That needs a *prefix-stable* template (adding a turn does not change how earlier turns render). When it is
not, a training copy of the template gets `{% generation %}` markers: inserted around the assistant's reply
and end-of-turn token (or TRL's patched copy of a template it knows), and checked on a probe conversation.

No torch import at module load; `prepare_tokenizer` on a path imports transformers.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

# chatsmith's own chat format: for tokenizers it trains and for bases that have no template.
# `{% generation %}` marks the assistant's tokens; the end-of-turn token sits inside it, so the model is
# trained to emit it and generation stops on it.
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

CHAT_FORMAT_FILE = "chat_format.json"


class ChatFormatError(ValueError):
    """The tokenizer's chat template or end-of-turn token is not what earlier stages set."""


# A probe conversation with words that appear nowhere else, to see where a template puts each turn.
PROBE_SYSTEM = {"role": "system", "content": "India juliet kilo."}
PROBE = [
    {"role": "user", "content": "Echo foxtrot?"},
    {"role": "assistant", "content": "Alpha bravo."},
    {"role": "user", "content": "Golf hotel?"},
    {"role": "assistant", "content": "Charlie delta."},
]
_PROBE_NOT_ASSISTANT = ("India", "juliet", "kilo", "Echo", "foxtrot", "Golf", "hotel")
_PAD_LIKE = ("pad",)
_UNUSED_LIKE = ("reserved", "unused", "control")


@dataclass(frozen=True)
class ChatFormat:
    """What a tokenizer's chat format means for training and generation."""

    source: str
    """"native" (the checkpoint's own template), "chatsmith" (`CHAT_TEMPLATE`), or "plain" (no chat template: an RL
    policy given prompts as text, whose reply ends at its EOS; see `plain_text_format`)."""
    end_of_turn: str
    """Token that closes an assistant turn (`<|im_end|>`, `<|eot_id|>`, `</s>`); it is the tokenizer's EOS."""
    end_of_turn_id: int
    document_eos: Optional[str]
    """The base model's end-of-document token (`<|endoftext|>`); may equal `end_of_turn`."""
    document_eos_id: Optional[int]
    pad: str
    pad_id: int
    masking: str
    """"prefix-diff" (template kept as is), "generation-markers" (a training copy with markers), "none" (plain)."""
    added_tokens: tuple[str, ...] = ()
    """Tokens added to the vocabulary (the model's embeddings must be resized); empty for native formats."""
    training_template: Optional[str] = field(default=None, compare=False, repr=False)
    """The marked training copy when masking is "generation-markers" (not saved: rebuilt from the tokenizer)."""

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("training_template")
        data["added_tokens"] = list(self.added_tokens)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ChatFormat":
        return cls(**{**data, "added_tokens": tuple(data.get("added_tokens", ()))})


def stop_token_ids(chat_format: ChatFormat) -> list[int]:
    """Token ids generation stops on: the end-of-turn token, then the document EOS when it differs."""
    ids = [chat_format.end_of_turn_id]
    if chat_format.document_eos_id is not None and chat_format.document_eos_id not in ids:
        ids.append(chat_format.document_eos_id)
    return ids


def configure_generation(model, chat_format: ChatFormat) -> None:
    """Make `model.generate` stop on the end-of-turn token and the document EOS, and pad with the pad token."""
    model.config.eos_token_id = chat_format.end_of_turn_id
    model.config.pad_token_id = chat_format.pad_id
    model.generation_config.eos_token_id = stop_token_ids(chat_format)
    model.generation_config.pad_token_id = chat_format.pad_id


# --------------------------------------------------------------------------- preparing a tokenizer


def prepare_tokenizer(source, *, template: str = "native", trust_remote_code: bool = False,
                      template_kwargs: Optional[dict] = None):
    """A tokenizer ready for chat training, and its `ChatFormat`.

    `source`: a tokenizer or a local dir. `template`: "native" keeps the checkpoint's template (chatsmith's is
    used only when it has none); "chatsmith" replaces it with chatsmith's (new tokens: resize the model).
    The document EOS is the one a dir's `chat_format.json` records, else the tokenizer's EOS, else (instruct
    checkpoints, whose EOS already is the end-of-turn) another EOS id of its generation_config.json / config.json."""
    if template not in ("native", "chatsmith"):
        raise ValueError(f"template must be 'native' or 'chatsmith', not {template!r}")
    tokenizer, directory = _load(source, trust_remote_code=trust_remote_code)
    saved = read_chat_format(directory) if directory else None
    saved = saved if saved is None or saved.source != "plain" else None  # a plain policy gets a template now
    original_eos = tokenizer.eos_token
    added: list[str] = []
    if template == "chatsmith" or not tokenizer.chat_template:
        added += use_chatsmith_template(tokenizer)
    end_of_turn = end_of_turn_token(tokenizer, template_kwargs=template_kwargs)
    document_eos = saved.document_eos if saved else _document_eos(tokenizer, original_eos, end_of_turn, directory)
    tokenizer.eos_token = end_of_turn  # an existing token: the vocabulary does not change
    pad, pad_added = ensure_pad_token(tokenizer, end_of_turn=end_of_turn, document_eos=document_eos,
                                      template_kwargs=template_kwargs)
    masking, training_template = choose_masking(tokenizer, end_of_turn=end_of_turn, template_kwargs=template_kwargs)
    chat_format = ChatFormat(
        source="chatsmith" if _template_text(tokenizer) == CHAT_TEMPLATE else "native",
        end_of_turn=end_of_turn, end_of_turn_id=tokenizer.convert_tokens_to_ids(end_of_turn),
        document_eos=document_eos,
        document_eos_id=tokenizer.convert_tokens_to_ids(document_eos) if document_eos is not None else None,
        pad=pad, pad_id=tokenizer.pad_token_id, masking=masking, added_tokens=tuple(added + pad_added),
        training_template=training_template,
    )
    if saved and (saved.end_of_turn, saved.pad) != (chat_format.end_of_turn, chat_format.pad):
        raise ChatFormatError(f"{source}: {CHAT_FORMAT_FILE} says end-of-turn {saved.end_of_turn!r} / pad "
                              f"{saved.pad!r} but the tokenizer gives {end_of_turn!r} / {pad!r}")
    return tokenizer, chat_format


def plain_text_format(tokenizer, *, where: str) -> ChatFormat:
    """The format of a tokenizer without a chat template, kept as is for RL (README: "a checkpoint without a chat
    template gets the prompt text as is"): a reply ends at the EOS; the pad is the EOS when there is none."""
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ChatFormatError(f"{where}: the tokenizer has neither a chat template nor an EOS token to end replies with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ChatFormat(source="plain", end_of_turn=tokenizer.eos_token, end_of_turn_id=tokenizer.eos_token_id,
                      document_eos=tokenizer.eos_token, document_eos_id=tokenizer.eos_token_id,
                      pad=tokenizer.pad_token, pad_id=tokenizer.pad_token_id, masking="none")


def _load(source, *, trust_remote_code: bool):
    """(tokenizer, its dir or None)."""
    if not isinstance(source, (str, os.PathLike)):
        return source, None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code), Path(source)


def _document_eos(tokenizer, original_eos: Optional[str], end_of_turn: str, directory: Optional[Path]) -> Optional[str]:
    if original_eos is not None and original_eos != end_of_turn:
        return original_eos
    # Qwen2.5-Instruct: EOS <|im_end|>, generation_config eos [<|im_end|>, <|endoftext|>]; Llama-3 instruct alike
    candidates = _special_ids(tokenizer) - {tokenizer.convert_tokens_to_ids(end_of_turn)}
    for name in ("generation_config.json", "config.json"):
        path = directory / name if directory else None
        ids = json.loads(path.read_text()).get("eos_token_id") if path and path.is_file() else None
        others = [i for i in (ids if isinstance(ids, list) else [ids]) if i in candidates]
        if others:
            return tokenizer.convert_ids_to_tokens(others[0])
    return original_eos


def use_chatsmith_template(tokenizer) -> list[str]:
    """Give `tokenizer` chatsmith's template and role/end-of-turn tokens; return the tokens it had to add."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [t for t in SPECIAL_TOKENS if t != PAD and t not in vocab]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return new


def end_of_turn_token(tokenizer, *, template_kwargs: Optional[dict] = None) -> str:
    """The special token the chat template puts right after an assistant's reply (the first one after it)."""
    reply = PROBE[1]["content"]
    text = render(tokenizer, PROBE[:2], template_kwargs=template_kwargs)
    at = text.rfind(reply)
    if at < 0:
        raise ChatFormatError(f"the chat template does not render the assistant's reply as written: {text!r}")
    after = text[at + len(reply):]
    special = _special_ids(tokenizer)
    for token_id in _encode(tokenizer, after):
        if token_id in special:
            return tokenizer.convert_ids_to_tokens(token_id)
    raise ChatFormatError(
        f"the chat template closes an assistant turn with {after!r}, which holds no special token: there is no "
        "end-of-turn token for the model to learn to emit and for generation to stop on"
    )


def ensure_pad_token(tokenizer, *, end_of_turn: str, document_eos: Optional[str] = None,
                     template_kwargs: Optional[dict] = None) -> tuple[str, list[str]]:
    """Keep the pad token; when there is none (or it is the end-of-turn token, which must stay unambiguous
    in generated text), reuse an unused special token, else add `<|pad|>`. Returns (pad, tokens added)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token != end_of_turn:
        return tokenizer.pad_token, []
    taken = {end_of_turn, document_eos, tokenizer.bos_token}
    spare = unused_special_tokens(tokenizer, exclude=taken, template_kwargs=template_kwargs)
    if spare:
        tokenizer.pad_token = spare[0]
        return spare[0], []
    new = [] if PAD in tokenizer.get_vocab() else [PAD]
    tokenizer.add_special_tokens({"pad_token": PAD})
    return PAD, new


def unused_special_tokens(tokenizer, *, exclude: Iterable[Optional[str]] = (),
                          template_kwargs: Optional[dict] = None) -> list[str]:
    """Special tokens the chat template never writes, that look reserved for padding or unused
    (`<|finetune_right_pad_id|>`, `<|reserved_special_token_0|>`, `[control_8]`), best first; the unknown
    token comes last (a byte-level or byte-fallback vocabulary never produces it)."""
    used = render(tokenizer, _probe(tokenizer, template_kwargs), template_kwargs=template_kwargs)
    exclude = set(exclude)
    ranked = []
    for token_id, token in tokenizer.added_tokens_decoder.items():
        name = token.content
        if not token.special or name in exclude or name in used or name == tokenizer.unk_token:
            continue
        lowered = name.lower()
        rank = 0 if any(w in lowered for w in _PAD_LIKE) else 1 if any(w in lowered for w in _UNUSED_LIKE) else None
        if rank is not None:
            ranked.append((rank, token_id, name))
    names = [name for _, _, name in sorted(ranked)]
    if tokenizer.unk_token is not None and tokenizer.unk_token not in exclude:
        names.append(tokenizer.unk_token)
    return names


def choose_masking(tokenizer, *, end_of_turn: str, template_kwargs: Optional[dict] = None) -> tuple[str, Optional[str]]:
    """("prefix-diff", None) when the template is prefix-stable on the probe conversation, else
    ("generation-markers", training copy). Raises ChatFormatError, saying why, when neither works."""
    probe = _probe(tokenizer, template_kwargs)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    try:
        ids, mask = _prefix_diff_mask(tokenizer, probe, end_of_turn, template_kwargs)
    except PrefixUnstable as unstable:
        return "generation-markers", training_chat_template(
            tokenizer, end_of_turn=end_of_turn, template_kwargs=template_kwargs, why=str(unstable))
    problem = _probe_problem(tokenizer, probe, ids, mask, end_of_turn_id, template_kwargs)
    if problem:
        raise ChatFormatError(f"assistant masks from the chat template's prefixes are wrong: {problem}")
    return "prefix-diff", None


# --------------------------------------------------------------------------- masks


class PrefixUnstable(ChatFormatError):
    """Adding a turn changes how the earlier turns render, so prefixes cannot be diffed."""


def assistant_mask(tokenizer, messages: list[dict], *, chat_format: Optional[ChatFormat] = None,
                   template_kwargs: Optional[dict] = None) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask that is 1 on each assistant reply and its
    end-of-turn token (not on role headers, not on text the template adds after the end-of-turn token)."""
    end_of_turn = (chat_format.end_of_turn if chat_format
                   else end_of_turn_token(tokenizer, template_kwargs=template_kwargs))
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    why = "the chat format records masking 'generation-markers'"
    if chat_format is None or chat_format.masking == "prefix-diff":
        try:
            return _prefix_diff_mask(tokenizer, messages, end_of_turn, template_kwargs)
        except PrefixUnstable as unstable:  # e.g. a template that drops reasoning from all but the last turn
            why = str(unstable)
    template = (chat_format and chat_format.training_template) or training_chat_template(
        tokenizer, end_of_turn=end_of_turn, template_kwargs=template_kwargs, why=why)
    ids, mask = _marker_mask(tokenizer, messages, template, end_of_turn_id, template_kwargs)
    replies = sum(m["role"] == "assistant" for m in messages)
    spans = _spans(mask)
    if len(spans) != replies or any(ids[end - 1] != end_of_turn_id for _, end in spans):
        raise ChatFormatError(f"the training template marked {len(spans)} spans ending in {end_of_turn!r} for "
                              f"{replies} assistant turns")
    return ids, mask


def tokenize_conversations(tokenizer, rows: Iterable, *, max_length: Optional[int] = None,
                           chat_format: Optional[ChatFormat] = None,
                           template_kwargs: Optional[dict] = None) -> list[dict]:
    """Rows `{"messages": [...]}` (or bare message lists) -> `{"input_ids", "assistant_masks"}`, cut to
    `max_length` tokens (kept from the start). Rows left with no assistant token are dropped, with a warning."""
    out, dropped = [], 0
    for i, row in enumerate(rows):
        messages = row["messages"] if isinstance(row, dict) else row
        try:
            ids, mask = assistant_mask(tokenizer, messages, chat_format=chat_format, template_kwargs=template_kwargs)
        except ChatFormatError as error:
            raise ChatFormatError(f"conversation {i}: {error}") from error
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            dropped += 1
            continue
        out.append({"input_ids": ids, "assistant_masks": mask})
    if dropped:
        warnings.warn(f"{dropped} conversation(s) had no assistant token within max_length={max_length}; dropped")
    return out


def _prefix_diff_mask(tokenizer, messages, end_of_turn, template_kwargs):
    full = render(tokenizer, messages, template_kwargs=template_kwargs)
    ids = _encode(tokenizer, full)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    mask = [0] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:k], generation_prompt=True, template_kwargs=template_kwargs) if k else ""
        through = render(tokenizer, messages[: k + 1], template_kwargs=template_kwargs)
        for prefix, whole in ((before, through), (through, full)):
            if not whole.startswith(prefix):
                raise PrefixUnstable(_first_difference(k, prefix, whole))
        closings = through.count(end_of_turn, len(before))
        if closings != 1:
            raise ChatFormatError(f"message {k}: the assistant's turn holds {closings} end-of-turn tokens "
                                  f"{end_of_turn!r}, not 1 (a reply that writes the token would teach stopping early)")
        start = _common_prefix(_encode(tokenizer, before), ids)
        # the end-of-turn token is special, so the tokenizer splits there: its first id after `start` ends the reply
        end = ids.index(end_of_turn_id, start) + 1 if end_of_turn_id in ids[start:] else start
        if end <= start:
            raise ChatFormatError(f"message {k}: the reply's tokens do not end with {end_of_turn!r}")
        mask[start:end] = [1] * (end - start)
    return ids, mask


def _marker_mask(tokenizer, messages, template, end_of_turn_id, template_kwargs):
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, **(template_kwargs or {}))
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    for start, end in _spans(mask):  # keep each span up to its last end-of-turn token (TRL's copies mark "\n" too)
        last = max((i for i in range(start, end) if ids[i] == end_of_turn_id), default=start - 1)
        mask[last + 1: end] = [0] * (end - last - 1)
    return ids, mask


def _first_difference(k: int, prefix: str, whole: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(prefix, whole)) if a != b), min(len(prefix), len(whole)))
    return (f"cut at message {k}, the conversation renders {prefix[max(0, at - 30): at + 30]!r} where a longer "
            f"cut renders {whole[max(0, at - 30): at + 30]!r}")


# --------------------------------------------------------------------------- training copy with markers


_TRAINING_TEMPLATES: dict[tuple[str, str], str] = {}


def training_chat_template(tokenizer, *, end_of_turn: str, template_kwargs: Optional[dict] = None,
                           why: str = "") -> str:
    """A copy of the tokenizer's template whose `{% generation %}` blocks cover each assistant reply and its
    end-of-turn token: the template itself when it has markers, else markers inserted here, else TRL's patched
    copy of a template it knows. Every candidate is checked on the probe conversation."""
    source = _template_text(tokenizer)
    key = (source, end_of_turn)
    if key not in _TRAINING_TEMPLATES:
        end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        found = next((t for t, same in _candidate_templates(tokenizer, source)
                      if _template_ok(tokenizer, t, source, end_of_turn_id, template_kwargs, same_text=same)), None)
        if found is None:
            raise ChatFormatError(
                f"cannot compute assistant-only loss masks for this chat template. It is not prefix-stable ({why}), "
                "and no copy of it with {% generation %} markers around the assistant's reply and its end-of-turn "
                f"token {end_of_turn!r} could be made. Add `{{% generation %}}...{{% endgeneration %}}` around the "
                "assistant's content and end-of-turn token in the template, or use chatsmith's template "
                "(prepare_tokenizer(..., template='chatsmith'); adds tokens the model must learn)."
            )
        _TRAINING_TEMPLATES[key] = found
    return _TRAINING_TEMPLATES[key]


def _candidate_templates(tokenizer, source: str):
    """(template, must render like the original) pairs, best first."""
    if _has_markers(source):
        yield source, True
    yield from ((candidate, True) for candidate in _inserted_markers(source))
    # TRL's copies come last: they may change rendering on purpose (prefix preservation) and some mark the
    # header's trailing newline too (Qwen2.5), which the model never generates.
    trl_copy = _trl_training_template(source)
    if trl_copy:
        yield trl_copy, False


def _trl_training_template(source: str) -> Optional[str]:
    """TRL's patched `<name>_training.jinja` when `source` is byte-identical to its `<name>.jinja`. The files
    are read directly: importing trl (and torch with it) takes seconds."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0]) / "chat_templates"
    for original in sorted(directory.glob("*.jinja")):
        patched = original.with_name(original.stem + "_training.jinja")
        if patched.is_file() and original.read_text(encoding="utf-8") == source:
            return patched.read_text(encoding="utf-8")
    return None


def _template_ok(tokenizer, template, source, end_of_turn_id, template_kwargs, *, same_text: bool) -> bool:
    probe = _probe(tokenizer, template_kwargs)
    try:
        if same_text and any(render(tokenizer, conv, template=template, template_kwargs=template_kwargs)
                             != render(tokenizer, conv, template=source, template_kwargs=template_kwargs)
                             for conv in (probe, PROBE)):
            return False
        ids, mask = _marker_mask(tokenizer, probe, template, end_of_turn_id, template_kwargs)
    except Exception:  # a candidate that does not compile or render is simply not the one
        return False
    return not _probe_problem(tokenizer, probe, ids, mask, end_of_turn_id, template_kwargs)


def _probe_problem(tokenizer, probe, ids, mask, end_of_turn_id, template_kwargs) -> str:
    """What is wrong with the masks of the probe conversation ("" when nothing)."""
    replies = [m["content"] for m in probe if m["role"] == "assistant"]
    spans = _spans(mask)
    if len(spans) != len(replies):
        return f"{len(spans)} masked spans for {len(replies)} assistant turns"
    header = _generation_header(tokenizer, template_kwargs).strip()
    for (start, end), reply in zip(spans, replies):
        text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
        others = [w for r in replies if r != reply for w in r.split()]
        if ids[end - 1] != end_of_turn_id:
            return f"the span {text!r} does not end with the end-of-turn token"
        if not all(w in text for w in reply.split()):
            return f"the span {text!r} misses the reply {reply!r}"
        if any(w.strip("?.") in text for w in (*_PROBE_NOT_ASSISTANT, *others)) or (header and header in text):
            return f"the span {text!r} covers more than the reply {reply!r}"
    return ""


def _inserted_markers(source: str):
    """Copies of `source` with `{% generation %}` from an output term naming `content` to the end of that
    term or of one in the next output tags; a variant also guards it with `role == "assistant"` for tags
    that render every role. Tags are split at top-level `+`/`~` so markers can sit inside one."""
    tags = _output_tags(source)
    for a, tag in enumerate(tags):
        if not re.search(r"\bcontent\b", tag.expr):
            continue
        loop_var = _loop_variable(source, tag.start)
        for c, term in enumerate(tag.terms):
            if not re.search(r"\bcontent\b", term):
                continue
            for guard in (None, loop_var) if loop_var else (None,):
                for b in range(a, min(a + 3, len(tags))):
                    for j in range(c if b == a else 0, len(tags[b].terms)):
                        yield _with_markers(source, tag, c, tags[b], j, guard)


_OPENER = re.compile(r"\{\{|\{%|\{#")


@dataclass
class _Tag:
    start: int
    end: int
    left: str  # whitespace control: "-", "+" or ""
    right: str
    expr: str
    terms: list[str]
    ops: list[str]


def _output_tags(source: str) -> list[_Tag]:
    tags, i = [], 0
    while (m := _OPENER.search(source, i)):
        opener = m.group()
        end = _closing(source, m.end(), {"{{": "}}", "{%": "%}", "{#": "#}"}[opener], quoted=opener != "{#")
        if opener == "{{":
            inner = source[m.start() + 2: end - 2]
            left = inner[0] if inner[:1] in ("-", "+") else ""
            right = inner[-1] if inner[-1:] in ("-", "+") else ""
            expr = inner[len(left): len(inner) - len(right)]
            terms, ops = _split_terms(expr)
            tags.append(_Tag(m.start(), end, left, right, expr, terms, ops))
        i = end
    return tags


def _closing(source: str, i: int, closer: str, *, quoted: bool) -> int:
    while i < len(source):
        if quoted and source[i] in "'\"":
            i = _string_end(source, i)
        elif source.startswith(closer, i):
            return i + len(closer)
        else:
            i += 1
    raise ChatFormatError(f"unclosed {closer!r} in the chat template")


def _string_end(source: str, i: int) -> int:
    quote, i = source[i], i + 1
    while i < len(source) and source[i] != quote:
        i += 2 if source[i] == "\\" else 1
    return i + 1


def _split_terms(expr: str) -> tuple[list[str], list[str]]:
    """`a + b ~ c` -> ([a, b, c], ["+", "~"]) at the top level; one term when splitting could change the meaning
    (conditional expressions, comparisons, other arithmetic)."""
    cuts, top, depth, i = [], [], 0, 0
    while i < len(expr):
        ch = expr[i]
        if ch in "'\"":
            end = _string_end(expr, i)
            top.append(" " * (end - i) if depth == 0 else "")
            i = end
            continue
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            top.append(ch)
            if ch in "+~":
                cuts.append(i)
        i += 1
    skeleton = "".join(top)
    if not cuts or re.search(r"\b(if|else|and|or|not|in|is)\b|[-*/%<>=!]", skeleton):
        return [expr], []
    bounds = [-1, *cuts, len(expr)]
    terms = [expr[bounds[n] + 1: bounds[n + 1]].strip() for n in range(len(bounds) - 1)]
    return terms, [expr[c] for c in cuts]


def _join(terms: list[str], ops: list[str]) -> str:
    return "".join(term if n == 0 else f" {ops[n - 1]} {term}" for n, term in enumerate(terms))


def _out(terms, ops, left: str = "", right: str = "") -> str:
    return f"{{{{{left} {_join(terms, ops)} {right}}}}}" if terms else ""


def _with_markers(source: str, a: _Tag, c: int, b: _Tag, j: int, guard: Optional[str]) -> str:
    """`source` with `{% generation %}` from term c of tag a through term j of tag b. Block tags carry the
    original tags' whitespace control, and `+%}` where there is none so trim_blocks eats no newline; a copy
    that still renders differently is refused by the caller."""
    head = _out(a.terms[:c], a.ops[: max(c - 1, 0)], left=a.left)
    if a is b:
        body = _out(a.terms[c: j + 1], a.ops[c: j])
    else:
        body = (_out(a.terms[c:], a.ops[c:], right=a.right) + source[a.end: b.start]
                + _out(b.terms[: j + 1], b.ops[:j], left=b.left))
    tail = _out(b.terms[j + 1:], b.ops[j + 1:], right=b.right)
    open_mod = "" if head else a.left  # no "+": transformers and TRL only recognise `{%-? generation -?%}`
    close_mod = (b.right if not tail else "") or "+"
    region = f"{head}{{%{open_mod} generation %}}{body}{{% endgeneration {close_mod}%}}{tail}"
    if guard:
        original = source[a.start: b.end]
        region = (f"{{%{a.left or '+'} if {guard}.role == 'assistant' %}}{region}{{% else %}}{original}"
                  f"{{% endif {b.right or '+'}%}}")
    return source[: a.start] + region + source[b.end:]


def _loop_variable(source: str, before: int) -> Optional[str]:
    loops = re.findall(r"\{%[-+]?\s*for\s+(\w+)\s+in\s+", source[:before])
    return loops[-1] if loops else None


# --------------------------------------------------------------------------- chat_format.json


def write_chat_format(directory: str | os.PathLike, chat_format: ChatFormat) -> Path:
    path = Path(directory) / CHAT_FORMAT_FILE
    path.write_text(json.dumps(chat_format.to_json(), indent=2) + "\n")
    return path


def read_chat_format(directory: str | os.PathLike) -> Optional[ChatFormat]:
    path = Path(directory) / CHAT_FORMAT_FILE
    return ChatFormat.from_json(json.loads(path.read_text())) if path.is_file() else None


def check_tokenizer(tokenizer, chat_format: ChatFormat, *, where: str) -> None:
    """Refuse a tokenizer that disagrees with the recorded chat format (another EOS, pad or vocabulary)."""
    found = (tokenizer.eos_token, tokenizer.convert_tokens_to_ids(chat_format.end_of_turn), tokenizer.pad_token)
    expected = (chat_format.end_of_turn, chat_format.end_of_turn_id, chat_format.pad)
    if found != expected:
        raise ChatFormatError(f"{where}: the tokenizer has EOS/end-of-turn id/pad {found}, but {CHAT_FORMAT_FILE} "
                              f"records {expected}")


# --------------------------------------------------------------------------- small helpers


def render(tokenizer, messages: list[dict], *, generation_prompt: bool = False, template: Optional[str] = None,
           template_kwargs: Optional[dict] = None) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=template, **(template_kwargs or {}))


def _probe(tokenizer, template_kwargs) -> list[dict]:
    """The probe conversation with a system message, or without one when the template refuses it."""
    with_system = [PROBE_SYSTEM, *PROBE]
    try:
        render(tokenizer, with_system, template_kwargs=template_kwargs)
    except Exception:  # templates raise (raise_exception) on roles they do not know
        return list(PROBE)
    return with_system


def _generation_header(tokenizer, template_kwargs) -> str:
    """What `add_generation_prompt` appends (the assistant's role header), or "" when it is not a plain suffix."""
    plain = render(tokenizer, PROBE[:1], template_kwargs=template_kwargs)
    prompted = render(tokenizer, PROBE[:1], generation_prompt=True, template_kwargs=template_kwargs)
    return prompted[len(plain):] if prompted.startswith(plain) else ""


def _template_text(tokenizer) -> str:
    template = tokenizer.chat_template
    return template.get("default", "") if isinstance(template, dict) else (template or "")


def _has_markers(template: str) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def _special_ids(tokenizer) -> set[int]:
    ids = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return ids | set(tokenizer.all_special_ids)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append((start, i))
            start = None
    return spans
