"""Every stage as a launched 2-process group (DDP via torchrun, DeepSpeed ZeRO-2 / ZeRO-3 via
accelerate) on tiny configs; both ranks really see world size 2 and different data; two machines
on localhost; failures recorded; launch commands built from the recipe's `launch` section."""

from __future__ import annotations

import json

import pytest

from helpers import DEMO, TINY, cli, free_port, manifest, start, weights

STAGES = ("pretrain", "sft", "reward", "ppo")


def _check_two_ranks(report_dir, *, deepspeed: bool) -> None:
    for stage in STAGES:
        worlds = [json.loads((report_dir / f"{stage}.world.rank{r}.json").read_text()) for r in (0, 1)]
        assert [w["accelerate_num_processes"] for w in worlds] == [2, 2], worlds
        assert [w["launcher_world_size"] for w in worlds] == [2, 2], worlds
        assert [w["accelerate_process_index"] for w in worlds] == [0, 1], worlds
        if deepspeed:
            assert all(w["distributed_type"].endswith("DEEPSPEED") for w in worlds), worlds
    for stage in ("pretrain", "sft", "reward"):  # PPO's prompt shards are checked by its own tests
        data = [json.loads((report_dir / f"{stage}.data.rank{r}.json").read_text()) for r in (0, 1)]
        assert [d["num_processes"] for d in data] == [2, 2] and [d["process_index"] for d in data] == [0, 1]
        assert data[0]["batch_sha256"] != data[1]["batch_sha256"], f"{stage}: both ranks got the same first batch"
    assert not list(report_dir.glob("*.rank2.json"))


def _check_pretrain_slices(report_dir, run_dir) -> None:
    """The two ranks' first-step sequences are disjoint and together are the global batch one process
    reads from the same token shards, seed and step."""
    from stages.data.shards import ShardSet
    from stages.data.sources import Source
    from stages.data.stream import TrainSampler

    ranks = [json.loads((report_dir / f"pretrain.data.rank{r}.json").read_text())["rows"] for r in (0, 1)]
    corpus = json.loads((run_dir / "data" / "corpus.json").read_text())
    shards = ShardSet.open(corpus["cache_dir"], corpus["keys"], sources=[Source(**s) for s in corpus["sources"]])
    recipe = json.loads((run_dir / "pretrain" / "chatsmith.json").read_text())["config"]
    per_rank, seq_len = recipe["batch_size"], recipe["seq_len"]
    sampler = TrainSampler(shards, seq_len=seq_len, global_batch=2 * per_rank, seed=recipe["seed"])
    whole = sampler.batch_for_step(0, rank=0, world=1, per_rank=2 * per_rank, grad_accum=1).reshape(-1, seq_len).tolist()
    assert [len(r) for r in ranks] == [per_rank, per_rank]
    assert not {tuple(x) for x in ranks[0]} & {tuple(x) for x in ranks[1]}, "the ranks share a sequence"
    assert sorted(ranks[0] + ranks[1]) == sorted(whole), "the ranks' slices are not the global batch"


def _check_outputs(run_dir) -> None:
    import torch

    stages = manifest(run_dir)
    assert {s: stages[s]["status"] for s in STAGES} == {s: "done" for s in STAGES}
    for stage in STAGES:
        tensors = weights(run_dir / stage)
        assert tensors and all(t.numel() > 0 and torch.isfinite(t).all() for t in tensors.values()), stage
        assert (run_dir / stage / "eval.json").exists() and not (run_dir / stage / "resume").exists()
    pre, sft = weights(run_dir / "pretrain"), weights(run_dir / "sft")
    assert any(not torch.equal(pre[k], sft[k]) for k in pre if k in sft), "SFT did not change the weights"
    assert (run_dir / "report.md").exists()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["ddp", "zero3"])  # ZeRO-2: test_two_machines_on_localhost (and test_resume)
def test_every_stage_on_two_processes(config, tmp_path):
    run_dir, report = tmp_path / "run", tmp_path / "ranks"
    port = free_port()
    launch = [f"launch.config={config}", "launch.num_processes=2", f"launch.main_process_port={port}"]
    result = cli("run", DEMO, "--out", run_dir, *TINY, *launch, extra_env={"CHATSMITH_RANK_REPORT": report})
    _check_two_ranks(report, deepspeed=config.startswith("zero"))
    _check_pretrain_slices(report, run_dir)
    _check_outputs(run_dir)
    assert (run_dir / "logs" / "pretrain.log").exists()
    if config == "ddp":
        # a finished run re-runs launching nothing (every launch appends its command line to the stage's log)
        # and touching no checkpoint
        before = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")}
        logs = {p: p.read_bytes() for p in (run_dir / "logs").glob("*.log")}
        assert all(b"torch.distributed.run" in logs[run_dir / "logs" / f"{stage}.log"] for stage in STAGES)
        again = cli("run", DEMO, "--out", run_dir, *TINY, *launch)
        assert again.stdout.count("done, skipped") == 4 and "torch.distributed.run" not in again.stdout
        assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/model.safetensors")} == before
        assert {p: p.read_bytes() for p in (run_dir / "logs").glob("*.log")} == logs
        assert {p.name for p in logs} >= {f"{stage}.log" for stage in ("pretrain", "sft", "reward", "ppo")}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_machines_on_localhost(tmp_path):
    """Two launchers (machine ranks 0 and 1, one process each) on 127.0.0.1 make one 2-process ZeRO-2 job
    per stage; machine 0 keeps the books, machine 1 follows. The suite's run of every stage under ZeRO-2."""
    run_dir, report = tmp_path / "run", tmp_path / "ranks"
    port = free_port()
    launch = ["launch.config=zero2", "launch.num_processes=1", "launch.num_machines=2",
              "launch.main_process_ip=127.0.0.1", f"launch.main_process_port={port}"]
    extra = {"CHATSMITH_RANK_REPORT": report}
    machines = [start("run", DEMO, "--out", run_dir, *TINY, *launch, f"launch.machine_rank={rank}",
                      extra_env=extra, log=tmp_path / f"machine{rank}.log") for rank in (0, 1)]
    try:
        codes = [m.wait(timeout=900) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    logs = "\n".join((tmp_path / f"machine{r}.log").read_text()[-2000:] for r in (0, 1))
    assert codes == [0, 0], logs
    _check_two_ranks(report, deepspeed=True)
    _check_pretrain_slices(report, run_dir)
    _check_outputs(run_dir)
    assert (run_dir / "logs" / "pretrain.log").exists()
    assert "machine 0 reports the run finished" in (tmp_path / "machine1.log").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_failed_launched_stage_is_recorded(tiny_assets, tmp_path):
    """An exception inside a launched child: the manifest says failed with the error, the CLI exits
    non-zero with one line naming the stage and its log."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    run_dir = tmp_path / "run"
    result = cli("stage", "sft", DEMO, "--out", run_dir, *TINY, f"stages.sft.init_from={tiny_assets['policy']}",
                 f"stages.sft.data={bad}", "launch.config=ddp", "launch.num_processes=2",
                 f"launch.main_process_port={free_port()}", check=False)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("chatsmith: error: stage sft failed: ValueError:") and "ending with an assistant turn" in line
    assert f"(log: {run_dir / 'logs' / 'sft.log'})" in line
    entry = manifest(run_dir)["sft"]
    assert entry["status"] == "failed" and entry["error"].startswith("ValueError:") and entry["log"].endswith("sft.log")
    assert "Traceback" in (run_dir / "logs" / "sft.log").read_text()


@pytest.mark.slow
def test_failed_stage_in_process_is_recorded(tiny_assets, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    run_dir = tmp_path / "run"
    result = cli("stage", "sft", DEMO, "--out", run_dir, *TINY, f"stages.sft.init_from={tiny_assets['policy']}",
                 f"stages.sft.data={bad}", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("chatsmith: error: stage sft failed: ValueError:")
    assert "Traceback" not in result.stderr
    entry = manifest(run_dir)["sft"]
    assert entry["status"] == "failed" and "assistant turn" in entry["error"]


def test_launch_commands_follow_the_recipe():
    from pipeline.launch import launcher_command, resolve_config
    from pipeline.recipe import LaunchConfig

    argv = ["stage", "sft", "r.yaml", "--out", "D"]
    ddp = launcher_command(LaunchConfig(config="ddp", num_processes=2), argv, cuda=False)
    assert ddp[1:3] == ["-m", "torch.distributed.run"] and ddp[ddp.index("--nproc_per_node") + 1] == "2"
    assert ddp[-6:] == ["pipeline.cli", *argv][-6:]
    zero3 = launcher_command(LaunchConfig(config="zero3", num_processes=8, num_machines=2, machine_rank=1,
                                          main_process_ip="10.0.0.1", main_process_port=29600), argv, cuda=True)
    assert zero3[1:3] == ["-m", "accelerate.commands.launch"]
    flags = dict(zip(zero3[3::2], zero3[4::2]))
    assert flags["--num_processes"] == "16" and flags["--machine_rank"] == "1" and flags["--main_process_ip"] == "10.0.0.1"
    assert zero3[zero3.index("--deepspeed_config_file") + 1].endswith("deepspeed/zero3.json")
    assert "--deepspeed_multinode_launcher" in zero3
    ddp_gpu = launcher_command(LaunchConfig(config="ddp", num_processes=8), argv, cuda=True)
    assert "accelerate.commands.launch" in ddp_gpu
    for name in ("single", "ddp", "zero2", "zero3", "zero3-offload"):
        assert resolve_config(name).exists()
    with pytest.raises(FileNotFoundError):
        resolve_config("nope.yaml")


def test_every_launch_config_and_deepspeed_json_loads():
    import yaml

    from pipeline.launch import CONFIG_DIR, _deepspeed_json

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED"), path
        if data["distributed_type"] == "DEEPSPEED":
            ds = json.loads(_deepspeed_json(path, data).read_text())
            assert ds["zero_optimization"]["stage"] in (2, 3) and ds["train_micro_batch_size_per_gpu"] == "auto"
