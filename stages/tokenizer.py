"""Tokenizer stage: a byte-level BPE trained on the pretraining text, or a base checkpoint's tokenizer.

In:  an iterator of documents (trained) or a local checkpoint dir (taken).
Out: a tokenizer dir loadable with `AutoTokenizer.from_pretrained`, carrying the chat template, the end-of-turn
     token (= EOS) and a pad token, and `chat_format.json` (end-of-turn vs document EOS) that every later stage
     reads and checks. A checkpoint's own template and special tokens are kept (`stages.chat_format`).

Run by `chatsmith run` (and `chatsmith stage pretrain`) before pretraining; not a stage of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from stages.chat_format import CHAT_TEMPLATE, END_OF_TURN, PAD, SPECIAL_TOKENS, prepare_tokenizer, write_chat_format
from stages.checkpoint import atomic_directory
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


def run(config: TokenizerConfig, *, documents: Iterable[str] | None, output_dir: str | Path):
    output_dir = Path(output_dir)
    if config.train:
        if documents is None:
            raise ValueError("tokenizer.train is true but there is no pretraining text to train on")
        source = train_tokenizer(documents, vocab_size=config.vocab_size)
    else:
        if not config.from_checkpoint:
            raise ValueError("tokenizer.train is false: set tokenizer.from_checkpoint to a checkpoint dir")
        source = config.from_checkpoint
    # The end-of-turn token becomes the EOS; the base's document EOS is kept in chat_format.json.
    tokenizer, chat_format = prepare_tokenizer(source, template=config.chat_template)
    with atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        write_chat_format(tmp, chat_format)
    return tokenizer
