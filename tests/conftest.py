"""Shared fixtures: a tokenizer trained here and tiny models built from configs (no hub downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Token shards of the tests' corpora go to a cache of this test session, not the user's ~/.cache.
os.environ.setdefault("CHATSMITH_CACHE", tempfile.mkdtemp(prefix="chatsmith-test-cache-"))

REPO = Path(__file__).resolve().parents[1]

from tiny_models import build_tiny_model, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Paths of a tiny tokenizer, a tiny causal LM and a tiny reward model (all with the chat template)."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    build_tiny_model(root / "policy", tokenizer, kind="causal")
    build_tiny_model(root / "reward", tokenizer, kind="reward", seed=1)
    return {"tokenizer": root / "tokenizer", "policy": root / "policy", "reward": root / "reward", "root": root}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts with no accelerate state: an `Accelerator` a previous in-process test made (a TRL
    trainer's, with its own mixed-precision setting) must not decide the next one's."""
    yield
    import sys

    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
