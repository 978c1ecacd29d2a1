"""Tiny tokenizer and models built from configs for tests (no hub downloads)."""

from __future__ import annotations

from pathlib import Path

TINY_TEXT = [
    f"The river of {town} is the {river}. People in {town} eat {dish}. The emblem of {town} is a {emblem}."
    for town, river, dish, emblem in [
        ("Alder", "Sorrel", "barley soup", "heron"),
        ("Brim", "Tallow", "plum cake", "lynx"),
        ("Corvi", "Umber", "fish stew", "oak"),
        ("Dunmere", "Vell", "goat cheese", "star"),
    ]
] * 20 + ["Hello! How can I help you today? I am happy to answer questions about towns."] * 20


def build_tiny_tokenizer(path: Path, vocab_size: int = 400):
    from stages.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TINY_TEXT, vocab_size=vocab_size)
    tokenizer.save_pretrained(path)
    return tokenizer


def build_tiny_model(path: Path, tokenizer, *, kind: str = "causal", hidden: int = 32, layers: int = 2, seed: int = 0):
    """A 2-layer Llama (causal LM or 1-label sequence classifier) saved as a HF checkpoint."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    if kind == "causal":
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model
