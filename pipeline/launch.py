"""Starting stages: in this process, or as a launched process group (accelerate / torchrun).

`chatsmith run` prepares the run directory (data, tokenizer) in this process, then runs each stage.
With `launch.config: single` and one process, a stage runs here. Otherwise each stage is its own
process group started with `accelerate launch` (DeepSpeed ZeRO configs; DDP on GPUs) or `torchrun`
(plain DDP on CPU, where accelerate starts only one process), each process running
`chatsmith stage NAME ...` with `CHATSMITH_LAUNCHED=1`: it runs the stage function and nothing else.
The parent keeps the bookkeeping: manifest, behaviour evaluation, eval.json, report.

    chatsmith run recipes/tiny-cpu.yaml launch.config=zero2 launch.num_processes=2

Several machines: run the same command on each with its `launch.machine_rank`. Machine 0 decides
which stages run (the manifest lives on the shared run directory) and tells the others through a
small key-value store on `main_process_ip:main_process_port+1`; each machine then starts its share of
every stage's process group, which meet at `main_process_ip:main_process_port`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.recipe import LaunchConfig, Recipe

LAUNCHED_ENV = "CHATSMITH_LAUNCHED"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"
NAMED_CONFIGS = ("single", "ddp", "zero2", "zero3", "zero3-offload")
STORE_TIMEOUT_S = 7 * 24 * 3600  # other machines wait this long for machine 0's next stage


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input (data, labels, checkpoints, resume state), told in one line."""
    from labeling.readers import InputError
    from pipeline.recipe import RecipeError
    from stages.chat_format import ChatFormatError
    from stages.checkpoint import ResumeError
    from stages.data.sources import DataError

    return DataError, InputError, RecipeError, ChatFormatError, ResumeError


def is_distributed(launch: LaunchConfig) -> bool:
    return launch.config != "single" or launch.num_processes > 1 or launch.num_machines > 1


def run_command(args, recipe: Recipe, out_dir: str) -> int:
    if os.environ.get(LAUNCHED_ENV):
        return run_launched_stage(args, recipe, out_dir)
    from pipeline.runner import Run, StageFailed

    run = Run(recipe, out_dir)
    launch = recipe.launch
    distributed = is_distributed(launch)
    try:
        if distributed and launch.machine_rank > 0:
            return follow_machine_zero(args, recipe, run)
        coordinator = Coordinator(launch) if distributed and launch.num_machines > 1 else None
        if distributed:
            run.launcher = lambda name: launch_stage(args, recipe, run, name, coordinator=coordinator)
        try:
            if args.command == "stage":
                run.prepare(only=args.name)
                metrics = run.run_stage(args.name, force=args.force)
                print(json.dumps({args.name: metrics}, indent=2, default=str))
            else:
                run.run_all()
                from pipeline.eval.run import run_arena

                run_arena(run)  # the run's checkpoints rated against each other (report.md shows it)
        except BaseException:
            if coordinator:
                coordinator.finish(ok=False)
            raise
        if coordinator:
            coordinator.finish(ok=True)
    except StageFailed as error:
        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 1
    except user_errors() as error:  # bad data or files found while preparing the run: one line, no traceback
        print(f"chatsmith: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.command == "stage":
        return 0
    from pipeline.report import stage_table, write_report

    report = run.dir / "report.md"
    arena = run.dir / "arena" / "ratings.json"
    if run.ran or not report.exists() or (arena.exists() and arena.stat().st_mtime > report.stat().st_mtime):
        # a no-op re-run keeps the report (writing it loads models)
        report = write_report(run.dir, recipe_name=recipe.name, samples=recipe.eval.report_samples)
    print()
    print(stage_table(run.dir))
    print(f"\nreport: {report}\nchat:   chatsmith chat {run.dir / 'ppo' if recipe.stages.ppo else run.dir / 'sft'}")
    return 0


# ------------------------------------------------------------------------------- the launched side


def run_launched_stage(args, recipe: Recipe, out_dir: str) -> int:
    """Inside a launched process group: run the stage function. Rank 0 writes the result for the
    parent; any rank that fails writes its one-line error beside the stage log."""
    from pipeline.runner import Run

    if args.command != "stage":
        raise SystemExit(f"chatsmith: {LAUNCHED_ENV} is set: only `chatsmith stage` runs in a launched process")
    rank = int(os.environ.get("RANK", "0"))
    run = Run(recipe, out_dir, say=print if rank == 0 else (lambda _: None))
    name, logs = args.name, run.dir / "logs"
    try:
        cfg = getattr(recipe.stages, name)
        inputs = run.stage_inputs(name)
        metrics = run.train(name, cfg, inputs, run.stage_dir(name))
    except BaseException as error:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.error.rank{rank}").write_text(f"{type(error).__name__}: {error}".strip()[:2000] + "\n")
        raise
    _report_world(name, rank)
    if rank == 0:
        from stages.common import write_json_atomic

        write_json_atomic(logs / f"{name}.result.json", metrics)
    _end_process_group()
    return 0


def _end_process_group() -> None:
    """Every rank leaves the process group together before exiting: a process that exits with the group's
    communication threads still running can abort on the way out ("terminate called without an active
    exception"), and the launcher then reports the finished stage as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _report_world(stage: str, rank: int) -> None:
    """Diagnostics for the distributed tests (only when CHATSMITH_RANK_REPORT names a directory):
    what accelerate believed the world was while the stage ran, next to what the launcher set."""
    from stages.distributed import RANK_REPORT_ENV

    report_dir = os.environ.get(RANK_REPORT_ENV)
    if not report_dir:
        return
    from accelerate import PartialState

    state = PartialState()
    path = Path(report_dir) / f"{stage}.world.rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "rank": rank, "launcher_world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                "accelerate_num_processes": state.num_processes, "accelerate_process_index": state.process_index,
                                "distributed_type": str(state.distributed_type)}))


# ------------------------------------------------------------------------------- the launching side


def resolve_config(config: str) -> Path:
    """`single`, `ddp`, `zero2`, ... name a file in recipes/accelerate/; anything else is a path."""
    path = CONFIG_DIR / f"{config}.yaml" if config in NAMED_CONFIGS else Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"launch.config: no accelerate config at {path}")
    return path.resolve()


def _deepspeed_json(accelerate_config: Path, data: dict) -> Path | None:
    ds = (data.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not ds:
        return None
    for base in (Path.cwd(), accelerate_config.parent, CONFIG_DIR.parents[1]):
        if (base / ds).is_file():
            return (base / ds).resolve()
    raise FileNotFoundError(f"{accelerate_config}: deepspeed_config_file {ds} not found")


def launcher_command(launch: LaunchConfig, stage_argv: list[str], *, cuda: bool) -> list[str]:
    """The command that starts this machine's share of a stage's process group."""
    config = resolve_config(launch.config)
    data = yaml.safe_load(config.read_text()) or {}
    deepspeed = data.get("distributed_type") == "DEEPSPEED"
    rendezvous = ["--main_process_ip", launch.main_process_ip, "--main_process_port", str(launch.main_process_port)]
    if not deepspeed and not cuda:
        # DDP on CPU: accelerate would start one process (it wants MPI for multi-CPU); torchrun starts them all.
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(launch.num_machines),
                "--node_rank", str(launch.machine_rank), "--nproc_per_node", str(launch.num_processes),
                "--master_addr", launch.main_process_ip, "--master_port", str(launch.main_process_port),
                "-m", "pipeline.cli", *stage_argv]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(launch.num_processes * launch.num_machines),  # accelerate counts the whole job
               "--num_machines", str(launch.num_machines), "--machine_rank", str(launch.machine_rank), *rendezvous]
    if deepspeed:
        command += ["--use_deepspeed", "--deepspeed_config_file", str(_deepspeed_json(config, data))]
        if launch.num_machines > 1:
            command += ["--deepspeed_multinode_launcher", "standard"]
    elif data.get("distributed_type") in (None, "NO"):
        command += ["--multi_gpu"]
    return [*command, "-m", "pipeline.cli", *stage_argv]


def stage_argv(args, name: str, run_dir: Path) -> list[str]:
    return ["stage", name, str(args.recipe), "--out", str(run_dir), *args.overrides]


def _die_with_parent() -> None:
    """Launcher processes get SIGTERM when the chatsmith process that started them dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_group(args, recipe: Recipe, run, name: str, *, log: Path) -> int:
    """Start this machine's processes of stage `name`, copy their output to `log` and the console,
    and return the launcher's exit code."""
    import torch

    command = launcher_command(recipe.launch, stage_argv(args, name, run.dir), cuda=torch.cuda.is_available())
    env = dict(os.environ, **{LAUNCHED_ENV: "1"})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n")
        handle.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent, bufsize=1, text=True, errors="replace")
        try:
            for line in proc.stdout:
                handle.write(line)
                sys.stdout.write(line)
        finally:
            code = proc.wait()
        sys.stdout.flush()
    return code


def launch_stage(args, recipe: Recipe, run, name: str, *, coordinator=None) -> dict:
    """Run stage `name` as a launched process group (machine 0); return the stage's metrics."""
    from pipeline.runner import StageFailed

    logs = run.dir / "logs"
    for stale in [logs / f"{name}.result.json", *logs.glob(f"{name}.error.rank*")]:
        stale.unlink(missing_ok=True)
    log = logs / f"{name}.log"
    if coordinator:
        coordinator.announce(name)
    code = start_group(args, recipe, run, name, log=log)
    result = logs / f"{name}.result.json"
    if code != 0 or not result.exists():
        # The root cause, not a rank that only saw its peer vanish.
        errors = sorted((path.read_text().strip() for path in logs.glob(f"{name}.error.rank*")), key=_is_collateral)
        reason = errors[0].splitlines()[0] if errors else f"launched processes exited with code {code}"
        raise StageFailed(name, reason, str(log))
    return json.loads(result.read_text())


def _is_collateral(error: str) -> bool:
    return any(mark in error for mark in ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo", "Broken pipe"))


def follow_machine_zero(args, recipe: Recipe, run) -> int:
    """Machines 1..N-1: start this machine's share of each stage machine 0 announces, until it says done."""
    coordinator = Coordinator(recipe.launch)
    rank = recipe.launch.machine_rank
    while True:
        name = coordinator.next_stage()
        if name in ("end", "abort"):
            print(f"machine {rank}: machine 0 reports {'the run finished' if name == 'end' else 'a failed stage'}")
            return 0 if name == "end" else 1
        print(f"machine {rank}: starting my processes of stage {name}")
        log = run.dir / "logs" / f"{name}.machine{rank}.log"
        code = start_group(args, recipe, run, name, log=log)
        if code != 0:
            print(f"chatsmith: error: stage {name} failed on machine {rank} (log: {log})", file=sys.stderr)
            return 1


class Coordinator:
    """Machine 0 tells the other machines which stage to start next (a torch TCPStore on
    main_process_port + 1): machine 0 skips finished stages on its own, the others follow."""

    def __init__(self, launch: LaunchConfig):
        from datetime import timedelta

        from torch.distributed import TCPStore

        self.main = launch.machine_rank == 0
        self.followers = launch.num_machines - 1
        self.index = 0
        self.store = TCPStore(launch.main_process_ip, launch.main_process_port + 1, is_master=self.main,
                              timeout=timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False)

    def announce(self, name: str) -> None:
        self.store.set(f"stage/{self.index}", name)
        self.index += 1

    def next_stage(self) -> str:
        name = self.store.get(f"stage/{self.index}").decode()
        self.store.add(f"seen/{self.index}", 1)
        self.index += 1
        return name

    def finish(self, *, ok: bool) -> None:
        """Announce the end; keep the store up until every follower has read it (at most a minute)."""
        final = self.index
        self.announce("end" if ok else "abort")
        deadline = time.time() + 60
        while self.store.add(f"seen/{final}", 0) < self.followers and time.time() < deadline:
            time.sleep(0.2)
