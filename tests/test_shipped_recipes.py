"""The shipped GPU recipes, with their paths pointed at stand-ins that reproduce the real formats (a tiny
Qwen2 / Llama checkpoint with its real chat template, a directory of .jsonl.gz + .parquet pretraining text,
a real-format Label Studio export, SFT / comparison / prompt files) and overrides this machine can take:
they pass `chatsmith check`, and their first stage starts and finishes a step. This proves the recipes'
data and model wiring, not their cluster size."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tiny import REPO, chatsmith

FIXTURES = REPO / "tests" / "fixtures" / "labeling"
SMALL = ["launch.config=single", "launch.num_processes=1", "launch.num_machines=1", "eval.max_new_tokens=8",
         "eval.batch_size=8"]


def _small_stage(name: str) -> list[str]:
    common = [f"stages.{name}.bf16=false", f"stages.{name}.max_steps=1", f"stages.{name}.save_steps=1",
              f"stages.{name}.batch_size=2", f"stages.{name}.gradient_accumulation_steps=1",
              f"stages.{name}.gradient_checkpointing=false"]
    sizes = {"pretrain": ["stages.pretrain.seq_len=32", "stages.pretrain.warmup_steps=0", "stages.pretrain.attn_implementation=null"],
             "sft": ["stages.sft.max_length=256", "stages.sft.warmup_steps=0", "stages.sft.attn_implementation=null"]}
    return common + sizes.get(name, [])


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rewrite(recipe: dict, mapping: dict[str, str]) -> dict:
    """Every string value that is one of the recipe's cluster paths, replaced by its stand-in."""
    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            for old, new in mapping.items():
                if node == old or node.startswith(old):
                    return node.replace(old, new, 1)
        return node
    return walk(recipe)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from real_formats import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("standins")
    models = {}
    for family, name in (("qwen2.5", "Qwen2.5-0.5B"), ("llama3.2", "Llama-3.2-1B")):
        path = root / "models" / name
        build_model(family, path, build_tokenizer(family, path))
        models[name] = path
    corpus = root / "data" / "corpus"
    (corpus / "domain").mkdir(parents=True)
    (corpus / "general").mkdir()
    docs = [{"text": f"Domain note {i}: the river of Alder is the Sorrel, and Brim eats plum cake."} for i in range(80)]
    with gzip.open(corpus / "domain" / "part-0.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(d) + "\n" for d in docs)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [d["text"].replace("Domain", "General") for d in docs]}), corpus / "general" / "part-0.parquet")
    data = root / "data"
    for sub in ("sft", "comparisons", "prompts", "labels"):
        (data / sub).mkdir()
    chat = [{"messages": [{"role": "user", "content": f"What is the river of Alder? ({i})"},
                          {"role": "assistant", "content": "The Sorrel."}]} for i in range(12)]
    _jsonl(data / "sft" / "demonstrations.jsonl", chat)
    _jsonl(data / "sft" / "demonstrations_eval.jsonl", chat[:3])
    pairs = [{"prompt": [{"role": "user", "content": f"Where is Brim? ({i})"}], "chosen": [{"role": "assistant", "content": "North."}],
              "rejected": [{"role": "assistant", "content": "Go away."}]} for i in range(12)]
    _jsonl(data / "comparisons" / "train.jsonl", pairs)
    _jsonl(data / "comparisons" / "eval.jsonl", pairs[:3])
    _jsonl(data / "prompts" / "rlhf_prompts.jsonl", [{"prompt": f"Tell me about Alder ({i})"} for i in range(12)])
    _jsonl(data / "prompts" / "heldout_prompts.jsonl", [{"prompt": f"Tell me about Brim ({i})", "split": "test"} for i in range(4)])
    shutil.copy(FIXTURES / "label_studio_ranker_export.json", data / "labels" / "project-12-export.json")
    mapping = {"/models/": f"{root / 'models'}/", "/data/": f"{data}/", "/shared/cache/chatsmith": str(root / "cache")}
    return root, mapping


@pytest.mark.slow
@pytest.mark.parametrize("recipe, first", [("qwen2.5-0.5b-8gpu.yaml", "pretrain"), ("llama-3.2-1b-lora-2node.yaml", "sft")])
def test_gpu_recipe_passes_check_and_its_first_stage_runs(recipe, first, standins, tmp_path):
    root, mapping = standins
    original = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    rewritten = _rewrite(original, mapping)
    assert json.dumps(rewritten).count(str(root)) >= 4, "the recipe's paths were not all found"
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(rewritten))
    out = tmp_path / "run"
    overrides = [*SMALL, *_small_stage(first)]
    checked = chatsmith("check", path, "--out", out, *overrides, check=False)
    assert checked.returncode == 0, checked.stderr
    chatsmith("stage", first, path, "--out", out, *overrides)
    assert (out / first / "model.safetensors").exists()
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(rewritten["tokenizer"]["from_checkpoint"])
    trained = AutoTokenizer.from_pretrained(out / first)
    assert len(trained) == len(base) and trained.chat_template == base.chat_template  # the native format is kept
