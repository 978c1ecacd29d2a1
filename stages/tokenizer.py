"""Tokenizer stage: a byte-level BPE trained on the pretraining text, or a base checkpoint's tokenizer.

In:  an iterator of documents (trained) or a local checkpoint dir (taken).
Out: a tokenizer dir loadable with `AutoTokenizer.from_pretrained`, carrying the chat template and
     the end-of-turn token (= EOS) that every later stage checks.

Run by `chatsmith run` (and `chatsmith stage pretrain`) before pretraining; not a stage of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from stages.checkpoint import atomic_directory
from stages.common import CHAT_TEMPLATE, END_OF_TURN, PAD, SPECIAL_TOKENS, check_chat_format
from stages.config import TokenizerConfig


def train_tokenizer(documents: Iterable[str], *, vocab_size: int):
    """Byte-level BPE with chatsmith's chat special tokens, as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(documents, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (END_OF_TURN, PAD)],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenizer_from_checkpoint(path: str, *, trust_remote_code: bool = False):
    """A base checkpoint's tokenizer. Its own chat template is kept when it marks the assistant's
    text for assistant-only loss; otherwise chatsmith's template and tokens are added (the model's
    embeddings are resized by the stage that loads it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not (tokenizer.chat_template and "{% generation %}" in tokenizer.chat_template):
        tokenizer.add_special_tokens(
            {"eos_token": END_OF_TURN, "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != PAD]}
        )
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def run(config: TokenizerConfig, *, documents: Iterable[str] | None, output_dir: str | Path):
    output_dir = Path(output_dir)
    if config.train:
        if documents is None:
            raise ValueError("tokenizer.train is true but there is no pretraining text to train on")
        tokenizer = train_tokenizer(documents, vocab_size=config.vocab_size)
    else:
        if not config.from_checkpoint:
            raise ValueError("tokenizer.train is false: set tokenizer.from_checkpoint to a checkpoint dir")
        tokenizer = tokenizer_from_checkpoint(config.from_checkpoint)
    check_chat_format(tokenizer, where="tokenizer")
    with atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer
