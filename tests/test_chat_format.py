"""Native chat formats: real templates kept, end-of-turn derived, assistant masks exact, TRL trains on them.

Stand-ins of Qwen2.5 (ChatML), Llama-3.2 and Mistral v0.3 tokenizers carry the families' real templates and
special tokens (tests/real_formats.py); chatsmith's own template is checked the same way.
"""

from __future__ import annotations

import pytest
from real_formats import FAMILIES, PINNED_DATE, Family, _bpe, build_model, build_tokenizer, chat_template

from stages import chat_format as cf
from stages.chat_format import CHAT_TEMPLATE, ChatFormatError

KW = {"date_string": PINNED_DATE}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Tell me about Alder"},
    {"role": "assistant", "content": "The river of Alder is the Sorrel."},
]
REPLIES = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
EXPECTED = {  # family: (end-of-turn, document EOS, pad after prepare, masking)
    "qwen2.5": ("<|im_end|>", "<|endoftext|>", "<|endoftext|>", "prefix-diff"),
    "llama3.2": ("<|eot_id|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "prefix-diff"),
    # Mistral v0.3 puts the system message into the *last* user turn only: prefix-unstable with a system message
    "mistral": ("</s>", "</s>", "[control_8]", "generation-markers"),
}

# ChatML that shows the system message only while the conversation ends with a user turn (the Mistral v0.3
# quirk): adding an assistant turn changes the earlier text, so prefixes cannot be diffed.
LAST_TURN_SYSTEM = (
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if messages[-1].role == 'user' %}{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3-like: reasoning is dropped from every assistant turn but the last, so only rows with reasoning are unstable.
LAST_TURN_REASONING = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if not loop.last and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Prefix-unstable, and the text is assembled in a variable: there is no reply expression to put markers around.
ACCUMULATED = (
    "{%- set ns = namespace(text='') %}"
    "{%- for message in messages %}"
    "{%- set ns.text = ns.text + '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' %}"
    "{%- endfor %}"
    "{%- if messages[-1].role == 'user' %}{{- '<|im_start|>system\\nAnswer briefly.<|im_end|>\\n' }}{%- endif %}"
    "{{- ns.text }}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """family -> dir of a saved stand-in base tokenizer."""
    root = tmp_path_factory.mktemp("real")
    return {family: (build_tokenizer(family, root / family), root / family)[1] for family in FAMILIES}


def fresh(base_dirs, family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dirs[family]))


def masked_texts(tokenizer, ids, mask):
    return [tokenizer.decode(ids[s:e]).strip() for s, e in cf._spans(mask)]


def unmasked_text(tokenizer, ids, mask):
    return tokenizer.decode([t for t, m in zip(ids, mask) if not m])


@pytest.mark.parametrize("family", FAMILIES)
def test_native_tokenizer_is_kept(base_dirs, family):
    before = fresh(base_dirs, family)
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs[family], template_kwargs=KW)
    assert len(tokenizer) == len(before) and tokenizer.get_vocab() == before.get_vocab()
    assert tokenizer.chat_template == chat_template(family)
    assert cf.render(tokenizer, CONVERSATION, template_kwargs=KW) == cf.render(before, CONVERSATION, template_kwargs=KW)
    assert (fmt.source, fmt.added_tokens) == ("native", ())


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_is_derived_from_the_template(base_dirs, family):
    end_of_turn, document_eos, pad, masking = EXPECTED[family]
    assert cf.end_of_turn_token(fresh(base_dirs, family), template_kwargs=KW) == end_of_turn
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs[family], template_kwargs=KW)
    assert (fmt.end_of_turn, fmt.document_eos, fmt.pad, fmt.masking) == (end_of_turn, document_eos, pad, masking)
    assert tokenizer.eos_token == end_of_turn and tokenizer.pad_token == pad
    ids = tokenizer.convert_tokens_to_ids
    assert cf.stop_token_ids(fmt) == list(dict.fromkeys([ids(end_of_turn), ids(document_eos)]))


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_cover_exactly_the_replies_and_end_of_turn(base_dirs, family):
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs[family], template_kwargs=KW)
    conversation = CONVERSATION if family != "mistral" else CONVERSATION[1:]  # v0.3 drops a system message here
    ids, mask = cf.assistant_mask(tokenizer, conversation, chat_format=fmt, template_kwargs=KW)
    assert masked_texts(tokenizer, ids, mask) == [reply + fmt.end_of_turn for reply in REPLIES]
    outside = unmasked_text(tokenizer, ids, mask)
    assert all(m["content"] in outside for m in conversation if m["role"] != "assistant")
    assert not any(reply in outside for reply in REPLIES)
    rendered = cf.render(tokenizer, conversation, template_kwargs=KW)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token:  # the template writes BOS; tokenizing must not add a second one
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_diff_equals_generation_markers(base_dirs, family):
    """The two ways of masking agree on a prefix-stable conversation: the markers inserted into a training copy
    of the real template, and (Qwen2.5) TRL's hand-patched training template."""
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs[family], template_kwargs=KW)
    conversation = CONVERSATION[1:]
    by_prefix = cf._prefix_diff_mask(tokenizer, conversation, fmt.end_of_turn, KW)
    source = tokenizer.chat_template
    inserted = next(t for t in cf._inserted_markers(source)
                    if cf._template_ok(tokenizer, t, source, fmt.end_of_turn_id, KW, same_text=True))
    assert cf._marker_mask(tokenizer, conversation, inserted, fmt.end_of_turn_id, KW) == by_prefix
    trl_copy = cf._trl_training_template(source)
    assert (trl_copy is not None) == (family == "qwen2.5")
    if trl_copy:  # TRL's copy also marks the "\n" that ends the role header, one token before each reply
        ids, mask = cf._marker_mask(tokenizer, conversation, trl_copy, fmt.end_of_turn_id, KW)
        assert ids == by_prefix[0]
        assert [(s + 1, e) for s, e in cf._spans(mask)] == cf._spans(by_prefix[1])
        assert {tokenizer.decode(ids[s]) for s, _ in cf._spans(mask)} == {"\n"}


def test_chatsmith_template_masks_match_its_generation_markers(tmp_path):
    from tiny_models import build_tiny_tokenizer

    trained = build_tiny_tokenizer(tmp_path / "tok")
    size = len(trained)
    tokenizer, fmt = cf.prepare_tokenizer(tmp_path / "tok")
    assert (fmt.source, fmt.end_of_turn, fmt.pad, fmt.masking, fmt.added_tokens) == (
        "chatsmith", "<|end|>", "<|pad|>", "prefix-diff", ())
    assert len(tokenizer) == size and tokenizer.chat_template == CHAT_TEMPLATE
    ids, mask = cf.assistant_mask(tokenizer, CONVERSATION, chat_format=fmt)
    reference = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True)
    assert (ids, mask) == (list(reference["input_ids"]), list(reference["assistant_masks"]))
    assert masked_texts(tokenizer, ids, mask) == [reply + "<|end|>" for reply in REPLIES]


def test_base_without_template_gets_chatsmith_template(base_dirs, tmp_path):
    tokenizer = fresh(base_dirs, "qwen2.5")
    size = len(tokenizer)
    tokenizer.chat_template = None
    tokenizer, fmt = cf.prepare_tokenizer(tokenizer)
    assert fmt.source == "chatsmith" and tokenizer.chat_template == CHAT_TEMPLATE
    assert (fmt.end_of_turn, fmt.document_eos, fmt.pad) == ("<|end|>", "<|endoftext|>", "<|endoftext|>")
    assert set(fmt.added_tokens) == {"<|end|>", "<|system|>", "<|user|>", "<|assistant|>"}
    assert len(tokenizer) == size + 4


def test_chatsmith_template_on_request_replaces_the_native_one(base_dirs):
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs["llama3.2"], template="chatsmith")
    assert fmt.source == "chatsmith" and fmt.end_of_turn == "<|end|>" and fmt.document_eos == "<|end_of_text|>"


def small_tokenizer(tmp_path, *, special, eos, pad, template):
    from transformers import PreTrainedTokenizerFast

    spec = Family(template="", special=special, bos=None, eos=eos, pad=pad)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(spec, 300), eos_token=eos, pad_token=pad)
    tokenizer.chat_template = template
    return tokenizer


def test_pad_is_added_only_when_no_special_token_is_spare(tmp_path):
    tokenizer = small_tokenizer(tmp_path, special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                eos="<|endoftext|>", pad=None, template=chat_template("qwen2.5"))
    size = len(tokenizer)
    tokenizer, fmt = cf.prepare_tokenizer(tokenizer)
    assert (fmt.pad, fmt.added_tokens, len(tokenizer)) == ("<|pad|>", ("<|pad|>",), size + 1)
    assert tokenizer.pad_token_id == fmt.pad_id == size


def test_pad_equal_to_end_of_turn_is_replaced(base_dirs):
    tokenizer = fresh(base_dirs, "mistral")
    tokenizer.pad_token = "</s>"  # a common fine-tuning habit; it makes the end of a reply ambiguous
    tokenizer, fmt = cf.prepare_tokenizer(tokenizer)
    assert fmt.pad == "[control_8]" and fmt.added_tokens == ()


def test_prefix_unstable_template_falls_back_to_generation_markers(base_dirs):
    tokenizer = fresh(base_dirs, "qwen2.5")
    tokenizer.chat_template = LAST_TURN_SYSTEM
    tokenizer, fmt = cf.prepare_tokenizer(tokenizer)
    assert fmt.masking == "generation-markers" and "{% generation %}" in fmt.training_template
    assert tokenizer.chat_template == LAST_TURN_SYSTEM  # the training copy is separate
    with pytest.raises(cf.PrefixUnstable):
        cf._prefix_diff_mask(tokenizer, CONVERSATION, fmt.end_of_turn, None)
    ids, mask = cf.assistant_mask(tokenizer, CONVERSATION, chat_format=fmt)
    assert masked_texts(tokenizer, ids, mask) == [reply + "<|im_end|>" for reply in REPLIES]
    assert "Hello there" in unmasked_text(tokenizer, ids, mask)


def test_row_that_is_prefix_unstable_falls_back_alone(base_dirs):
    tokenizer = fresh(base_dirs, "qwen2.5")
    tokenizer.chat_template = LAST_TURN_REASONING
    tokenizer, fmt = cf.prepare_tokenizer(tokenizer)
    assert fmt.masking == "prefix-diff"  # the probe has no reasoning
    thinking = [{"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "<think>\nshort\n</think>\n\nHi!"},
                {"role": "user", "content": "Tell me"},
                {"role": "assistant", "content": "<think>\nlong\n</think>\n\nThe Sorrel."}]
    rows = cf.tokenize_conversations(tokenizer, [{"messages": thinking}, CONVERSATION], chat_format=fmt)
    first = masked_texts(tokenizer, rows[0]["input_ids"], rows[0]["assistant_masks"])
    assert first == ["Hi!<|im_end|>", "<think>\nlong\n</think>\n\nThe Sorrel.<|im_end|>"]
    second = masked_texts(tokenizer, rows[1]["input_ids"], rows[1]["assistant_masks"])
    assert second == [reply + "<|im_end|>" for reply in REPLIES]


def test_template_where_nothing_works_is_refused_clearly(base_dirs):
    tokenizer = fresh(base_dirs, "qwen2.5")
    tokenizer.chat_template = ACCUMULATED
    with pytest.raises(ChatFormatError, match=r"not prefix-stable.*\{% generation %\}"):
        cf.prepare_tokenizer(tokenizer)


def test_template_without_end_of_turn_token_is_refused(base_dirs):
    tokenizer = fresh(base_dirs, "qwen2.5")
    tokenizer.chat_template = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n\n{% endfor %}"
    with pytest.raises(ChatFormatError, match="no special token"):
        cf.prepare_tokenizer(tokenizer)


def test_chat_format_file_round_trip(base_dirs, tmp_path):
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs["qwen2.5"], template_kwargs=KW)
    tokenizer.save_pretrained(tmp_path)
    cf.write_chat_format(tmp_path, fmt)
    again, fmt_again = cf.prepare_tokenizer(tmp_path, template_kwargs=KW)
    assert fmt_again == fmt and fmt_again.document_eos == "<|endoftext|>"  # not the saved EOS (<|im_end|>)
    assert cf.read_chat_format(tmp_path) == fmt
    cf.check_tokenizer(again, fmt, where="test")
    again.pad_token = "<|vision_pad|>"
    with pytest.raises(ChatFormatError, match="records"):
        cf.check_tokenizer(again, fmt, where="test")


def test_truncation_drops_rows_without_reply(base_dirs):
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs["qwen2.5"])
    with pytest.warns(UserWarning, match="2 conversation"):
        rows = cf.tokenize_conversations(tokenizer, [CONVERSATION, CONVERSATION], max_length=8, chat_format=fmt)
    assert rows == []
    whole = cf.tokenize_conversations(tokenizer, [CONVERSATION], chat_format=fmt)[0]
    cut = whole["assistant_masks"].index(1) + 3
    rows = cf.tokenize_conversations(tokenizer, [CONVERSATION], max_length=cut, chat_format=fmt)
    assert rows == [{"input_ids": whole["input_ids"][:cut], "assistant_masks": whole["assistant_masks"][:cut]}]


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_sft_trains_only_on_masked_tokens(base_dirs, tmp_path, family):
    """Pre-tokenized rows with `assistant_masks` go through TRL's SFTTrainer untouched by its template code:
    labels are -100 outside the mask (and on padding), the model's vocabulary is unchanged, 2 steps train."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    build_model(family, tmp_path / "base", fresh(base_dirs, family))
    tokenizer, fmt = cf.prepare_tokenizer(tmp_path / "base", template_kwargs=KW)
    conversation = CONVERSATION if family != "mistral" else CONVERSATION[1:]
    rows = cf.tokenize_conversations(tokenizer, [conversation, conversation[:-2], CONVERSATION[1:3]],
                                     chat_format=fmt, template_kwargs=KW)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    cf.configure_generation(model, fmt)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=3, use_cpu=True,
                     report_to=[], save_strategy="no", logging_steps=1, max_length=256, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    by_ids = {tuple(r["input_ids"]): r["assistant_masks"] for r in rows}
    for input_ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        n = next(len(k) for k in by_ids if tuple(input_ids[: len(k)]) == k)
        mask = by_ids[tuple(input_ids[:n])]
        assert labels[:n] == [t if m else -100 for t, m in zip(input_ids[:n], mask)]
        assert set(labels[n:]) <= {-100}
        assert fmt.end_of_turn_id in [t for t, m in zip(input_ids, mask) if m]
    trainer.train()
    assert trainer.state.global_step == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == len(fresh(base_dirs, family))
    assert model.generation_config.eos_token_id == cf.stop_token_ids(fmt)


def test_reply_that_writes_the_end_of_turn_token_is_refused(base_dirs):
    tokenizer, fmt = cf.prepare_tokenizer(base_dirs["qwen2.5"])
    bad = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Done.<|im_end|> More."}]
    with pytest.raises(ChatFormatError, match=r"conversation 1: message 1: .* 2 end-of-turn tokens"):
        cf.tokenize_conversations(tokenizer, [CONVERSATION, bad], chat_format=fmt)


def test_trl_sft_packing_keeps_the_masks(base_dirs, tmp_path):
    """With packing, TRL cuts rows to max_length without dropping the ones left with no reply: rows cut by
    tokenize_conversations(max_length=...) first keep every masked token as a label."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    build_model("llama3.2", tmp_path / "base", fresh(base_dirs, "llama3.2"))
    tokenizer, fmt = cf.prepare_tokenizer(tmp_path / "base", template_kwargs=KW)
    rows = cf.tokenize_conversations(tokenizer, [CONVERSATION, CONVERSATION[:3]] * 3, max_length=128,
                                     chat_format=fmt, template_kwargs=KW)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                     report_to=[], save_strategy="no", max_length=128, packing=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "base"), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    labels = [label for row in trainer.train_dataset for label in row["labels"] if label != -100]
    assert len(labels) == sum(sum(row["assistant_masks"]) for row in rows) > 0
    trainer.train()
    assert trainer.state.global_step == 2


def test_instruct_checkpoint_document_eos_comes_from_its_generation_config(base_dirs, tmp_path):
    """Qwen2.5-Instruct's tokenizer EOS already is <|im_end|>; <|endoftext|> is in generation_config.json."""
    tokenizer = fresh(base_dirs, "qwen2.5")
    tokenizer.eos_token = "<|im_end|>"
    model = build_model("qwen2.5", tmp_path, tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.save_pretrained(tmp_path)
    _, fmt = cf.prepare_tokenizer(tmp_path)
    assert (fmt.end_of_turn, fmt.document_eos) == ("<|im_end|>", "<|endoftext|>")
    _, without_config = cf.prepare_tokenizer(tokenizer)
    assert without_config.document_eos == "<|im_end|>"  # nothing else to go on


def test_sft_masks_in_several_processes_equal_one_process(base_dirs, tmp_path):
    """`dataset_num_proc`: SFT's conversations tokenized by 2 processes (`datasets.map`) are the rows one
    process gives, in order, with the same rows dropped."""
    import json

    from stages.sft import conversations

    tokenizer, fmt = cf.prepare_tokenizer(base_dirs["qwen2.5"])
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": "Answer " + "word " * (i % 7)}]} for i in range(40)]
    rows[5]["messages"][0]["content"] = "x " * 200  # nothing of the reply within max_length: dropped
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="1 conversation"):
        one = conversations(path, tokenizer, fmt, max_length=96)
    with pytest.warns(UserWarning, match="1 conversation"):
        two = conversations(path, tokenizer, fmt, max_length=96, num_proc=2)
    assert len(one) == 39 and one.to_list() == two.to_list()
