"""`chatsmith plan RECIPE`: what a recipe will cost before you submit the cluster job.

    chatsmith plan recipes/qwen2.5-0.5b-8gpu.yaml --gpu H100-80GB --mfu 0.4

Per stage: parameters (trained and frozen), memory per GPU for the model states under the recipe's
launch config (DeepSpeed's own ZeRO-2 / ZeRO-3 estimators; DDP and single replicate everything, which
is the ZeRO-2 estimate on one GPU), a rough activation figure, tokens processed, FLOPs (6·N per
trained token, 2·N per forward-only token) and the time that takes at the stated MFU on the stated GPU.
What a stage (and each RL algorithm) costs is its registry entry's `cost` (`pipeline.registry`).

Parameter counts come from the model config, built on the meta device (no weights are read): the
recipe's architecture, or `config.json` of a local checkpoint. A real-model recipe whose paths do not
exist on this machine falls back to a table of known sizes keyed by the model's name in the path
(the output says so). Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.recipe import Recipe
from pipeline.registry import STAGES, running

# Dense bf16 tensor-core peak (TFLOP/s) and memory (GiB) per GPU, from the vendors' data sheets.
GPUS = {
    "A100-40GB": (312.0, 40),
    "A100-80GB": (312.0, 80),
    "H100-80GB": (989.0, 80),
    "H200-141GB": (989.0, 141),
    "L40S-48GB": (362.0, 48),
}

# Known sizes of common base models: total params, hidden size, layers, vocab (from their config.json).
KNOWN_MODELS = {
    "qwen2.5-0.5b": (494_032_768, 896, 24, 151_936),
    "qwen2.5-1.5b": (1_543_714_304, 1536, 28, 151_936),
    "qwen2.5-7b": (7_615_616_512, 3584, 28, 152_064),
    "llama-3.2-1b": (1_235_814_400, 2048, 16, 128_256),
    "llama-3.2-3b": (3_212_749_824, 3072, 28, 128_256),
    "llama-3.1-8b": (8_030_261_248, 4096, 32, 128_256),
    "mistral-7b": (7_241_732_096, 4096, 32, 32_000),
}


@dataclass
class ModelSize:
    params: int
    largest_layer: int
    hidden: int
    layers: int
    source: str


def _count_on_meta(config) -> ModelSize:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return ModelSize(params, max(p.numel() for p in model.parameters()), config.hidden_size, config.num_hidden_layers, "")


def model_size(recipe: Recipe, path: str | None) -> ModelSize:
    """Size of the model a stage starts from: a local checkpoint's config, the recipe's architecture,
    or the table of known models."""
    if path and (Path(path) / "config.json").exists():
        from transformers import AutoConfig

        size = _count_on_meta(AutoConfig.from_pretrained(path))
        size.source = f"config.json of {path}"
        return size
    if path:
        key = next((k for k in sorted(KNOWN_MODELS, key=len, reverse=True) if k in Path(path).name.lower()), None)
        if key is None:
            raise ValueError(f"{path} does not exist here and its name matches no known model "
                             f"({', '.join(KNOWN_MODELS)}); run plan where the checkpoint is")
        params, hidden, layers, vocab = KNOWN_MODELS[key]
        return ModelSize(params, vocab * hidden, hidden, layers, f"known size of {key} ({path} not found here)")
    from transformers import AutoConfig

    arch = recipe.stages.pretrain.model
    vocab = recipe.tokenizer.vocab_size
    config = AutoConfig.for_model(arch.architecture, vocab_size=vocab, hidden_size=arch.hidden_size,
                                  intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_hidden_layers,
                                  num_attention_heads=arch.num_attention_heads,
                                  num_key_value_heads=arch.num_key_value_heads or arch.num_attention_heads,
                                  max_position_embeddings=arch.max_position_embeddings,
                                  tie_word_embeddings=arch.tie_word_embeddings)
    size = _count_on_meta(config)
    size.source = f"recipe architecture ({arch.architecture}, vocab {vocab})"
    return size


def zero_stage(recipe: Recipe) -> str:
    """`single`, `ddp`, `zero2`, `zero3` or `zero3-offload` for the recipe's launch config."""
    config = recipe.launch.config
    if config in ("single", "ddp", "zero2", "zero3", "zero3-offload"):
        return "ddp" if config == "single" and recipe.launch.num_processes * recipe.launch.num_machines > 1 else config
    import yaml

    data = yaml.safe_load(Path(config).read_text()) or {}
    ds_file = (data.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if data.get("distributed_type") != "DEEPSPEED" or not ds_file:
        return "ddp"
    from pipeline.launch import _deepspeed_json

    zero = json.loads(_deepspeed_json(Path(config).resolve(), data).read_text()).get("zero_optimization", {})
    offload = zero.get("offload_param", {}).get("device") == "cpu"
    return {2: "zero2", 3: "zero3-offload" if offload else "zero3"}.get(zero.get("stage"), "ddp")


def states_memory(trained: ModelSize, *, zero: str, gpus_per_node: int, nodes: int) -> tuple[int, int, str]:
    """(GPU bytes, CPU bytes, how) for the trained model's params + grads + Adam states."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs its accelerator choice to stdout on import
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if zero in ("zero3", "zero3-offload"):
        offload = zero == "zero3-offload"
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(trained.params, trained.largest_layer, gpus_per_node, nodes,
                                                            cpu_offload=offload, cpu_offload_params=offload, zero_init=True)
        return gpu, cpu, "DeepSpeed estimate_zero3_model_states_mem_needs" + (" (offload)" if offload else "")
    if zero == "zero2":
        cpu, gpu = estimate_zero2_model_states_mem_needs(trained.params, gpus_per_node, nodes, cpu_offload=False)
        return gpu, cpu, "DeepSpeed estimate_zero2_model_states_mem_needs"
    cpu, gpu = estimate_zero2_model_states_mem_needs(trained.params, 1, 1, cpu_offload=False)
    return gpu, cpu, "replicated (ZeRO-2 estimate on one GPU)"


def activation_bytes(size: ModelSize, *, micro_batch: int, seq_len: int, checkpointing: bool) -> int:
    """Activations of one micro-batch, bf16 (Korthikanti et al. 2022: ~34·s·b·h per layer without
    recomputation, ~2·s·b·h with full checkpointing), attention scores excluded (flash/SDPA)."""
    per_layer = (2 if checkpointing else 34) * seq_len * micro_batch * size.hidden
    return per_layer * size.layers


def plan(recipe: Recipe, *, gpu: str, mfu: float) -> dict:
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    peak_tflops, gpu_gib = GPUS[gpu]
    launch = recipe.launch
    world = launch.num_processes * launch.num_machines
    zero = zero_stage(recipe)
    out = {"gpu": gpu, "mfu": mfu, "peak_tflops": peak_tflops, "gpu_memory_gib": gpu_gib, "launch": zero,
           "gpus": world, "nodes": launch.num_machines, "stages": {}}
    # A stage starts from its own checkpoint (`Stage.start`), else from the output of the stage it follows; the first
    # stage from the recipe's architecture, one whose stage is not in the recipe from the tokenizer's checkpoint.
    base_path = recipe.tokenizer.from_checkpoint if not recipe.tokenizer.train else None
    sizes: dict[str, ModelSize] = {}
    for name in running(recipe):
        cfg, stage = getattr(recipe.stages, name), STAGES[name]
        start = getattr(cfg, stage.start)
        if start or stage.follows is None:
            size = model_size(recipe, start)
        else:
            size = sizes.get(stage.follows) or model_size(recipe, base_path)
        sizes[name] = size
        cost = STAGES[name].cost(cfg, size.params, world)
        states_size = ModelSize(cost.trained, size.largest_layer, size.hidden, size.layers, size.source)
        gpu_bytes, cpu_bytes, how = states_memory(states_size, zero=zero, gpus_per_node=launch.num_processes, nodes=launch.num_machines)
        frozen_bytes = cost.frozen * (2 if cfg.bf16 else 4)
        act = activation_bytes(size, micro_batch=cost.micro_batch, seq_len=cost.seq_len, checkpointing=cfg.gradient_checkpointing)
        total_gib = (gpu_bytes + frozen_bytes + act) / 2**30
        seconds = cost.flops / (world * peak_tflops * 1e12 * mfu)
        out["stages"][name] = {
            "params": size.params, "params_source": size.source, "trained_params": cost.trained, "frozen_params": cost.frozen,
            "model_states_gib_per_gpu": gpu_bytes / 2**30, "model_states_how": how, "cpu_gib_per_node": cpu_bytes / 2**30,
            "frozen_models_gib_per_gpu": frozen_bytes / 2**30, "activations_gib_per_gpu": act / 2**30,
            "total_gib_per_gpu": total_gib, "fits": total_gib <= gpu_gib,
            "tokens": cost.tokens, "flops": cost.flops, "hours": seconds / 3600,
            "lora": bool(getattr(cfg, "lora", None) and cfg.lora.enabled),
        }
        if getattr(cfg, "algorithm", None):
            out["stages"][name]["algorithm"] = cfg.algorithm
    return out


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def render(result: dict) -> str:
    lines = [f"plan: {result['gpus']} GPU(s) on {result['nodes']} node(s), launch {result['launch']}, "
             f"{result['gpu']} ({result['peak_tflops']:.0f} TFLOP/s bf16 peak, {result['gpu_memory_gib']} GiB) at MFU {result['mfu']}",
             "", "| stage | params (trained / frozen) | GiB per GPU: states + frozen + activations = total | tokens | FLOPs | time |",
             "|---|---|---|---|---|---|"]
    notes = []
    for name, s in result["stages"].items():
        fit = "" if s["fits"] else " (does not fit)"
        lines.append(f"| {name} | {_human(s['params'])} ({_human(s['trained_params'])} / {_human(s['frozen_params'])}) | "
                     f"{s['model_states_gib_per_gpu']:.2f} + {s['frozen_models_gib_per_gpu']:.2f} + {s['activations_gib_per_gpu']:.2f} "
                     f"= {s['total_gib_per_gpu']:.2f}{fit} | {_human(s['tokens'])} | {s['flops']:.2e} | {_fmt_hours(s['hours'])} |")
        lora = "; LoRA: figures are for full fine-tuning (an upper bound)" if s["lora"] else ""
        notes.append(f"- {name}: params from {s['params_source']}; model states: {s['model_states_how']}{lora}")
    total = sum(s["hours"] for s in result["stages"].values())
    lines += ["", f"total: {_fmt_hours(total)} of compute at MFU {result['mfu']} (generation in PPO is usually slower than that)", *notes,
              "- tokens are upper bounds for SFT and reward (sequences padded to max_length); activations assume bf16 "
              "and flash/SDPA attention"]
    return "\n".join(lines)


def _fmt_hours(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h"


def main(args, recipe: Recipe) -> int:
    try:
        result = plan(recipe, gpu=args.gpu, mfu=args.mfu)
    except ValueError as error:
        import sys

        print(f"chatsmith: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if math.isfinite(sum(s["hours"] for s in result["stages"].values())) else 1
