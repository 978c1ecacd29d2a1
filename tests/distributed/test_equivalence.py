"""Invariants of the pretraining loop: the same global batch gives the same training whether it is
one micro-batch of 8, eight accumulated micro-batches of 1, or 2 processes x 4 (DDP).
Not bit-equal (the sums happen in another order): losses within 1e-4 relative, weights within 1e-4."""

from __future__ import annotations

import pytest

from helpers import DEMO, TINY, cli, free_port, losses, weights

COMMON = ["stages.pretrain.max_steps=20", "stages.pretrain.save_steps=100", "stages.pretrain.logging_steps=2"]
RTOL, ATOL = 1e-4, 1e-4


def _pretrain(out, *overrides):
    cli("stage", "pretrain", DEMO, "--out", out, *TINY, *COMMON, *overrides)
    return losses(out / "pretrain"), weights(out / "pretrain")


def _close(a, b):
    import torch

    loss_a, weights_a = a
    loss_b, weights_b = b
    assert len(loss_a) == len(loss_b) == 10
    assert all(abs(x - y) <= RTOL * abs(x) for x, y in zip(loss_a, loss_b)), (loss_a, loss_b)
    worst = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a)
    assert worst < ATOL, f"weights differ by up to {worst}"
    assert loss_a[-1] < loss_a[0]  # and it trained


@pytest.fixture(scope="module")
def one_by_eight(tmp_path_factory):
    return _pretrain(tmp_path_factory.mktemp("b8") / "run", "stages.pretrain.batch_size=8")


@pytest.mark.slow
def test_eight_accumulated_micro_batches_equal_one_batch(one_by_eight, tmp_path):
    accumulated = _pretrain(tmp_path / "run", "stages.pretrain.batch_size=1", "stages.pretrain.gradient_accumulation_steps=8")
    _close(one_by_eight, accumulated)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_with_the_same_global_batch(one_by_eight, tmp_path):
    two = _pretrain(tmp_path / "run", "stages.pretrain.batch_size=4", "launch.config=ddp", "launch.num_processes=2",
                    f"launch.main_process_port={free_port()}")
    _close(one_by_eight, two)
