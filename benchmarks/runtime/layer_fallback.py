"""How many layers NVFP4 KV must keep at a higher precision for SmolLM2-135M's quality drop to fall under 0.01.

    PY=$(python3 runtime_image/setup_env.py --python)
    PYTHONPATH=operator:runtime_image $PY -m benchmarks.runtime.layer_fallback [--samples 4 --max-seq-len 128]

1. Calibrates NVFP4 with `qfleet-runtime calibrate` (ModelOpt, per-layer KL analysis: the KL of quantizing only
   that layer), with the calibration settings given (default: the demo's, 4 builtin samples of <= 128 tokens).
2. Ranks the layers by that KL, worst first, and for k = 0, 1, 2, ... keeps the k worst at bf16 (and at fp8) with
   everything else NVFP4: the plan `layerFallback.maxLayerKL` makes when its bound sits between the k-th and the
   (k+1)-th KL. Each plan is scored exactly as `evaluate` scores it (`stored_cache.build_cache` + `quality.compare`
   over the held-out text in windows of 512), against BF16 KV computed once.
3. Prints and writes (--out, JSON) per plan: the layers, the maxLayerKL that selects them, qualityDrop, KL, and the
   planner's bytes per token for the mixed plan (`qfleet.capacity.mixed_kv_bytes_per_token`).

A measurement, not a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qfleet.capacity import mixed_kv_bytes_per_token
from qfleet.formats import kv_format
from qfleet.shapes import known_shape
from qfleet_runtime import model_recipe, quality
from qfleet_runtime.datasets import heldout_text
from qfleet_runtime.stored_cache import build_cache

SMOLLM = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
WINDOW = 512
DEFAULT_KS = (0, 1, 2, 3, 4, 6, 8, 10, 12, 15, 20, 30)


def calibrate(work: Path, samples: int, max_seq_len: int, analysis: int) -> dict:
    artifacts = work / "nvfp4"
    summary = work / "calibrate.json"
    args = [sys.executable, "-m", "qfleet_runtime", "calibrate", "--revision", "sweep", "--kv-format", "nvfp4",
            "--artifacts", str(artifacts), "--summary-file", str(summary), "--model-uri", SMOLLM,
            "--model-revision", "main", "--weights", "bf16", "--dataset", "builtin", "--samples", str(samples),
            "--max-seq-len", str(max_seq_len), "--analysis-samples", str(analysis)]
    subprocess.run(args, check=True)
    return json.loads((artifacts / "calibrate-report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--analysis-samples", type=int, default=8)
    parser.add_argument("--eval-tokens", type=int, default=0, help="0: all held-out tokens")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="qfleet-layer-fallback-") as tmp:
        report = calibrate(Path(tmp), args.samples, args.max_seq_len, args.analysis_samples)
    rows = report["layers"]
    amax = [(float(r["kAmax"]), float(r["vAmax"])) for r in rows]
    ranked = sorted(rows, key=lambda r: -float(r["kl"]))
    model, tokenizer = model_recipe.load(model_recipe.prepare())
    model.set_attn_implementation("sdpa")
    layers = len(rows)
    ids = tokenizer(heldout_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if args.eval_tokens:
        ids = ids[: args.eval_tokens]
    windows = [ids[s: s + WINDOW] for s in range(0, len(ids) - 1, WINDOW) if len(ids[s: s + WINDOW]) >= 2]
    references = [quality.logprobs(model, w, build_cache(layers, "bf16", None))[:-1] for w in windows]
    shape = known_shape(SMOLLM)
    assert shape is not None
    results = []
    for higher in ("bf16", "fp8"):
        for k in (int(x) for x in args.ks.split(",")):
            kept = sorted(int(r["layer"]) for r in ranked[:k])
            bound = float(ranked[k]["kl"]) if k < layers else 0.0
            total = quality.Score()
            for window, reference in zip(windows, references):
                cache = build_cache(layers, "nvfp4", amax)
                for i in kept:  # the fallback layers in `higher` (bf16 layers take no scale)
                    cache.layers[i].kv_format = higher
                total += quality.compare(reference, quality.logprobs(model, window, cache)[:-1], window[1:])
            row = {"higher": higher, "k": k, "layers": kept, "maxLayerKL": round(bound, 6),
                   "qualityDrop": round(total.drop, 5), "kl": round(total.kl_sum / total.scored, 5),
                   "tokens": total.scored,
                   "bytesPerToken": int(mixed_kv_bytes_per_token(shape, kv_format("nvfp4"), kv_format(higher), k))}
            results.append(row)
            print(json.dumps(row), flush=True)
    out = {"calibration": {"samples": args.samples, "maxSeqLen": args.max_seq_len,
                           "analysisSamples": args.analysis_samples,
                           "layerKL": {int(r["layer"]): r["kl"] for r in rows}},
           "plans": results, "seconds": round(time.monotonic() - started)}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"done in {out['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
