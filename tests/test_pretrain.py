"""Pretrain from token shards: the stage's files, weights change, the cache reused, exact resume after kill -9
without reading the sources again. (Sources, shards and the sampler: tests/data.)"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import DEMO, REPO, TINY, chatsmith, env


def _stage_dir(tmp_path):
    return tmp_path / "run"


@pytest.mark.slow
def test_pretrain_stage_writes_checkpoint_and_changes_weights(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = _stage_dir(tmp_path)
    chatsmith("stage", "pretrain", DEMO, "--out", out, *TINY)
    ckpt = out / "pretrain"
    evals = json.loads((ckpt / "eval.json").read_text())
    # trained: better than a uniform guess over the 400-token vocabulary, and cheaper than 8 bits a byte
    assert 0 < evals["eval_loss"] < math.log(400) and 0 < evals["bits_per_byte"] < 8
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    # the same architecture at its seeded initialisation: training moved every weight matrix
    from stages.config import PretrainConfig
    from pipeline.recipe import load_recipe
    from stages.pretrain import build_model
    from transformers import AutoTokenizer

    recipe = load_recipe(DEMO, TINY)
    init = build_model(recipe.stages.pretrain, AutoTokenizer.from_pretrained(ckpt))
    trained = load_file(ckpt / "model.safetensors")
    changed = [k for k, v in init.state_dict().items() if k in trained and v.dim() == 2 and not torch.equal(v, trained[k])]
    assert len(changed) == len([k for k, v in init.state_dict().items() if k in trained and v.dim() == 2])
    rows = [json.loads(l) for l in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    per_step = 8 * 64  # batch 8 x seq_len 64, one source
    assert [r["tokens/demo-world"] for r in rows] == [r["step"] * per_step for r in rows]
    assert evals["tokens_by_source"] == {"demo-world": 30 * per_step}

    # The same corpus and tokenizer again: the token shards come from the cache.
    again = chatsmith("stage", "pretrain", DEMO, "--out", out, "--force", *TINY)
    assert "token shards from the cache (nothing tokenized)" in again.stdout


def kill_after_first_save(args, *, timeout=300):
    """Run the CLI with the stage's test kill point at its first save of resume state (`CHATSMITH_TEST_KILL_AFTER_SAVE=1`:
    it SIGKILLs itself right after that save); return the killed process."""
    from stages.checkpoint import KILL_AFTER_SAVE_ENV

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env={**env(), KILL_AFTER_SAVE_ENV: "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"the stage was not killed at its first save:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_pretrain_resumes_exactly_after_kill(tmp_path):
    from safetensors.torch import load_file

    # its own cache: the corpus file it corrupts below must not be the one other tests read
    overrides = [*TINY, "stages.pretrain.max_steps=60", "stages.pretrain.save_steps=20", f"data.cache_dir={tmp_path / 'cache'}"]
    whole = tmp_path / "whole"
    chatsmith("stage", "pretrain", DEMO, "--out", whole, *overrides)

    cut = tmp_path / "cut"
    kill_after_first_save(["stage", "pretrain", DEMO, "--out", cut, *overrides])
    assert json.loads((cut / "manifest.json").read_text())["stages"]["pretrain"]["status"] == "running"
    assert not (cut / "pretrain" / "model.safetensors").exists()
    assert json.loads((cut / "pretrain" / "resume" / "state.json").read_text())["counters"] == {"step": 20}
    # The corpus is overwritten with other bytes of the same size and modification time: its fingerprint
    # is unchanged, so a resume that read the source again would train on garbage and end elsewhere.
    source = Path(json.loads((cut / "data" / "corpus.json").read_text())["sources"][0]["paths"][0])
    stat = source.stat()
    source.write_bytes(b"x" * stat.st_size)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = chatsmith("stage", "pretrain", DEMO, "--out", cut, *overrides)
    assert "resuming from step 20" in result.stdout + result.stderr
    assert "token shards from the cache (nothing tokenized)" in result.stdout

    a, b = load_file(whole / "pretrain" / "model.safetensors"), load_file(cut / "pretrain" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps_a = [json.loads(l)["loss"] for l in (whole / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps_b = [json.loads(l)["loss"] for l in (cut / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps_a == steps_b


def test_resume_state_refuses_files_chatsmith_did_not_write(tmp_path):
    """Resume state is only loaded when every file matches the hash recorded at save (DeepSpeed's loader
    unpickles); an older layout or another launch setting gets a message saying what to do."""
    import json

    import torch
    from accelerate import Accelerator

    from stages.checkpoint import ResumeError, ResumeState, make_scheduler
    from stages.config import PretrainConfig

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = make_scheduler(optimizer, PretrainConfig(), 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    resume = ResumeState(accelerator, tmp_path / "resume")
    resume.save(model=model, optimizer=optimizer, scheduler=scheduler, counters={"step": 3})
    assert resume.load(model=model, optimizer=optimizer, scheduler=scheduler) == {"step": 3}

    (tmp_path / "resume" / "loop.pt").write_bytes((tmp_path / "resume" / "loop.pt").read_bytes() + b"x")
    with pytest.raises(ResumeError, match="loop.pt does not match what chatsmith recorded"):
        resume.load(model=model, optimizer=optimizer, scheduler=scheduler)

    resume.save(model=model, optimizer=optimizer, scheduler=scheduler, counters={"step": 4})
    state = json.loads((tmp_path / "resume" / "state.json").read_text())
    (tmp_path / "resume" / "state.json").write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ResumeError, match="saved by 2 process"):
        resume.load(model=model, optimizer=optimizer, scheduler=scheduler)

    old = tmp_path / "old" / "resume"  # what resume format 1 wrote: no state.json
    old.mkdir(parents=True)
    (old / "loop.pt").write_bytes(b"")
    with pytest.raises(ResumeError, match="older chatsmith"):
        ResumeState(accelerator, old).load(model=model, optimizer=optimizer, scheduler=scheduler)
