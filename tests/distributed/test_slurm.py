"""The sbatch script derives node count, machine rank and main address from SLURM's environment
(checked with stand-ins for srun / scontrol / chatsmith that print what they are given)."""

import os
import subprocess

from helpers import REPO

STUBS = {
    "scontrol": "printf 'gpu-node-07\\ngpu-node-08\\n'",
    "srun": 'while [[ $1 == --* ]]; do shift; done\nfor id in 0 1; do SLURM_NODEID=$id "$@"; done',
    "chatsmith": 'echo "chatsmith $*"',
}


def test_sbatch_passes_machine_rank_and_main_address(tmp_path):
    for name, body in STUBS.items():
        (tmp_path / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu-node-[07-08]",
               SLURM_GPUS_ON_NODE="4", LAUNCH_CONFIG="zero3")
    out = subprocess.run(["bash", str(REPO / "recipes" / "slurm" / "chatsmith.sbatch"), "recipes/r.yaml", "/shared/run", "seed=3"],
                         env=env, capture_output=True, text=True, check=True).stdout
    lines = [l for l in out.splitlines() if l.startswith("chatsmith run")]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert line.split() == ["chatsmith", "run", "recipes/r.yaml", "--out", "/shared/run", "launch.config=zero3",
                                "launch.num_machines=2", "launch.num_processes=4", f"launch.machine_rank={rank}",
                                "launch.main_process_ip=gpu-node-07", "launch.main_process_port=29500", "seed=3"]
