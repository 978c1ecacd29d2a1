"""Tiny stand-ins of real model families' tokenizers and models, built here (no hub downloads).

In:  a family name ("qwen2.5", "llama3.2", "mistral") and a directory.
Out: a tokenizer dir with the family's real chat template (tests/fixtures/chat_templates/), its real
     special tokens (names, special flags, BOS/EOS/PAD/UNK roles, BOS added by the post-processor where
     the family does that) over a small BPE trained on a toy corpus; and a 2-layer random model of the
     family's own architecture (Qwen2 / Llama / Mistral config class) whose vocab is len(tokenizer).

The stand-ins are the *base* checkpoints' tokenizers: their EOS is the document EOS
(`<|endoftext|>`, `<|end_of_text|>`, `</s>`), so deriving the end-of-turn token from the template is tested.
Long runs of reserved tokens are shortened (Llama-3 has 248 reserved tokens, Mistral v0.3 761 controls).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
PINNED_DATE = "26 Jul 2024"  # Llama 3.2's template prints today's date (strftime_now) unless date_string is given

CORPUS = [
    f"The river of {town} is the {river}. People in {town} eat {dish}. Hello! How can I help you today? "
    f"I am happy to answer questions about {town}: the answer is {n}."
    for n, (town, river, dish) in enumerate([
        ("Alder", "Sorrel", "barley soup"), ("Brim", "Tallow", "plum cake"),
        ("Corvi", "Umber", "fish stew"), ("Dunmere", "Vell", "goat cheese"),
    ])
] * 10


@dataclass(frozen=True)
class Family:
    template: str
    """File name under tests/fixtures/chat_templates/."""
    special: list[str]
    """Added tokens with special=True, in the family's id order."""
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None = None
    plain_added: list[str] = field(default_factory=list)
    """Added tokens with special=False (Qwen's tool-call and FIM tokens)."""
    additional_special: list[str] = field(default_factory=list)
    """`additional_special_tokens` of the family's tokenizer_config.json."""
    specials_first: bool = False
    """Specials take the first ids (SentencePiece families) rather than following the BPE vocab."""
    metaspace: bool = False
    """SentencePiece-style pre-tokenizer (`▁` for spaces) instead of byte-level."""
    architecture: str = "llama"


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                  *[f"<|reserved_special_token_{i}|>" for i in range(3, 8)]]
MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", *[f"[control_{i}]" for i in range(8, 16)]]

FAMILIES = {
    # Qwen/Qwen2.5-0.5B (base): eos = pad = <|endoftext|>, no BOS; the template speaks ChatML.
    "qwen2.5": Family(template="qwen2.5.jinja", special=QWEN_SPECIAL, bos=None, eos="<|endoftext|>",
                      pad="<|endoftext|>", plain_added=["<tool_call>", "</tool_call>", "<|fim_prefix|>",
                                                        "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                                        "<|repo_name|>", "<|file_sep|>"],
                      additional_special=QWEN_SPECIAL[1:], architecture="qwen2"),
    # meta-llama/Llama-3.2-1B (base): eos <|end_of_text|>, no pad; the tokenizer prepends <|begin_of_text|>.
    "llama3.2": Family(template="llama3.2.jinja", special=LLAMA3_SPECIAL, bos="<|begin_of_text|>",
                       eos="<|end_of_text|>", pad=None, architecture="llama"),
    # mistralai/Mistral-7B-v0.3: SentencePiece-style, specials first, <s> prepended, no pad.
    "mistral": Family(template="mistral.jinja", special=MISTRAL_SPECIAL, bos="<s>", eos="</s>", pad=None,
                      unk="<unk>", specials_first=True, metaspace=True, architecture="mistral"),
}


def chat_template(family: str) -> str:
    return (TEMPLATES / FAMILIES[family].template).read_text(encoding="utf-8")


def _bpe(spec: Family, vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if spec.metaspace:
        bpe = Tokenizer(models.BPE(unk_token=spec.unk))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = list(string.printable)
    else:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec.special if spec.specials_first else [],
                                  initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    if not spec.specials_first:  # byte-level families append their specials after the BPE vocab
        bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.plain_added])
    if spec.bos:
        from tokenizers import processors

        bpe.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos}:1 $B:1",
            special_tokens=[(spec.bos, bpe.token_to_id(spec.bos))])
    return bpe


def build_tokenizer(family: str, path: str | Path, *, vocab_size: int = 400):
    """Save a stand-in of `family`'s base tokenizer to `path`; return it as loaded by AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(spec, vocab_size), bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
        unk_token=spec.unk, additional_special_tokens=spec.additional_special or None,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template(family)
    tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(str(path))


def build_model(family: str, path: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A 2-layer random model of the family's architecture, vocab = len(tokenizer), saved with the tokenizer."""
    import torch
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM),
                                 "mistral": (MistralConfig, MistralForCausalLM)}[FAMILIES[family].architecture]
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = model_class(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model
