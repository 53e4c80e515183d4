"""`make bench-runtime`: the NVFP4-vs-FP8 prefix-cache figure, measured on qfleet's CPU runtime with SmolLM2-135M.

    PY=$(python3 runtime_image/setup_env.py --python)
    $PY benchmarks/runtime/bench.py [--out benchmarks/results] [--work DIR] [--quick]
    .venv/bin/python benchmarks/runtime/plot.py          # the two PNGs, from the JSON this writes

What it does, all with the runtime's own code:

1. Calibrates fp8, int8 and nvfp4 with `qfleet-runtime calibrate` (ModelOpt, as the pipeline does) and evaluates
   every variant with `qfleet-runtime evaluate` (the pipeline's quality figure, `qualityDrop`, on the first
   `EVAL_TOKENS` held-out tokens). `evaluate` measures the plan `serve` stores, so the calibration's fallback layers
   are in bf16; the variant without them (NVFP4 every layer) is evaluated on the same calibration with its report's
   fallbackLayers emptied (`without_fallback_layers`).
2. Generates one seeded prompt stream (`stream.py`: shared system prompts, multi-turn conversations) for all.
3. For every prefix-cache budget and every variant: a fresh `engine.Engine` (the object the Triton model's `execute`
   calls, warmed up as `serve` does), then the stream one request at a time through `Engine.request` with
   `max_tokens` 1: tokenize, prefix-cache lookup, load the cached blocks, prefill the rest with the KV stored in the
   format, store the new blocks, first token. Per run: hit rate (prompt tokens served from the prefix cache / prompt
   tokens), TTFT p50 and p99, prompt tokens per second, and what the store holds at the end (blocks, bytes, bytes per
   cached token).
4. Budgets come from the capacity planner (`qfleet.capacity.plan_capacity`) on a fictional one-GPU replica whose
   memory is the bf16 weights plus the budget (KV fraction 1): its `kv_cache_bytes` is the engine's prefix-cache
   budget and its `tokens_per_replica` is compared with the tokens the store held.

Writes runtime.json, runtime.csv and runtime-summary.md under --out; prints the machine, the commit, the ratios and
the wall time. It is a benchmark, not a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [str(REPO / "operator"), str(REPO / "runtime_image"), str(REPO)]
for _root in reversed(SOURCE_ROOTS):
    if _root not in sys.path:
        sys.path.insert(0, _root)

from benchmarks.runtime import stream  # noqa: E402
from benchmarks.runtime.summary import ratios, summary_markdown, write_csv  # noqa: E402
from localfleet.loadgen import Report  # noqa: E402  (its percentile: the one the demo and loadgen report)
from qfleet.capacity import plan_capacity, weight_bytes  # noqa: E402
from qfleet.formats import kv_format, weight_format  # noqa: E402
from qfleet.gpus import GPU  # noqa: E402
from qfleet.shapes import known_shape  # noqa: E402

SMOLLM = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
CALIBRATED = ("fp8", "int8", "nvfp4")
CALIBRATION = {"samples": 16, "max_seq_len": 256, "analysis_samples": 1, "max_layer_kl": "0.01"}
"""The pipeline's calibration with test-sized data: 16 builtin samples of at most 256 tokens, the per-layer KL on one
of them, layers above 0.01 nats become fallback layers."""
EVAL_TOKENS, EVAL_SEQ_LEN = 2048, 512
BUDGETS_MIB = (3, 6, 12, 24, 48, 96)
"""Prefix-cache budgets (MiB of KV cache, before the planner rounds the fictional GPU up to a whole MiB): at 3 MiB
BF16 holds 9 blocks (144 tokens, less than one system prompt) and NVFP4 31 (about one); at 96 MiB every format holds
the whole default stream (193 distinct blocks: 68 MiB in BF16)."""
MAX_TOKENS = 1
"""TTFT is the figure: one generated token per request (decode speed does not depend on the prefix cache)."""


@dataclass(frozen=True)
class Variant:
    name: str
    kv_format: str
    fallback_layers: bool
    """Whether the calibration's fallbackLayers are stored in bf16 (what `serve` does)."""
    label: str


VARIANTS = (
    Variant("bf16", "bf16", False, "BF16"),
    Variant("fp8", "fp8", True, "FP8"),
    Variant("int8", "int8", True, "INT8"),
    Variant("nvfp4", "nvfp4", False, "NVFP4 (every layer)"),
    Variant("nvfp4-fb", "nvfp4", True, "NVFP4 + fallback layers in BF16"),
)


def log(message: str) -> None:
    print(f"[bench-runtime {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the planner ------------------------------------------------------------------------------------------------------

def planner_budget(target_mib: float, formats: tuple[str, ...] = ("bf16", "fp8", "int8", "nvfp4")
                   ) -> tuple[int, dict[str, int]]:
    """(KV cache bytes, tokens per replica by format) from `plan_capacity` for SmolLM2 on one fictional GPU whose
    memory is the bf16 weights plus `target_mib` (rounded up to a whole MiB), all of the rest for the KV cache."""
    shape = known_shape(SMOLLM)
    assert shape is not None, SMOLLM
    weights = weight_format("bf16")
    memory_mib = math.ceil((weight_bytes(shape, weights) + target_mib * 2**20) / 2**20)
    gpu = GPU("bench", "qfleet-bench", "none", 10, 0, memory_mib)
    plan = plan_capacity(shape, gpu, weights, kv_memory_fraction=Fraction(1), sequence_length=2048,
                         kv_formats=[kv_format(name) for name in formats])
    return plan.memory.kv_cache_bytes, {name: plan.for_format(name).tokens_per_replica for name in formats}


# -- one run of the stream --------------------------------------------------------------------------------------------

def run_stream(engine: Any, prompts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """Sends `prompts` one after the other through `engine.request` (what the Triton model's execute calls) and
    measures the run; `engine` starts with an empty prefix cache."""
    generations = []
    started = time.monotonic()
    for prompt in prompts:
        generations.append(engine.request(prompt, max_tokens))
    seconds = time.monotonic() - started
    block = engine.config.block_tokens
    prompt_tokens = sum(g.prompt_tokens for g in generations)
    cached_tokens = sum(g.prefix_hits for g in generations) * block
    ttft = Report(latencies=[g.ttft for g in generations])
    held_tokens = len(engine.prefix) * block
    return {
        "requests": len(generations),
        "promptTokens": prompt_tokens,
        "cachedTokens": cached_tokens,
        "hitRate": cached_tokens / prompt_tokens,
        "blockHitRate": engine.prefix.hit_rate,
        "ttftP50": ttft.percentile(0.5),
        "ttftP99": ttft.percentile(0.99),
        "ttftMean": sum(ttft.latencies) / len(ttft.latencies),
        "seconds": seconds,
        "promptTokensPerSecond": prompt_tokens / seconds,
        "computedTokensPerSecond": (prompt_tokens - cached_tokens) / seconds,
        "computedTokensPerRequest": (prompt_tokens - cached_tokens) / len(generations),
        "storeBlocks": len(engine.prefix),
        "storeTokens": held_tokens,
        "storeBytes": engine.prefix.used_bytes,
        "bytesPerCachedToken": engine.prefix.used_bytes / held_tokens if held_tokens else None,
        "evictions": engine.prefix.evictions,
        "fallbackTokens": sum(g.fallback_tokens for g in generations),
        "sequenceBytesPerToken": sum(g.kv_bytes for g in generations) / sum(g.kv_tokens for g in generations),
    }


def ideal_hit_rate(token_lists: list[list[int]], block: int) -> float:
    """The hit rate with an unbounded prefix cache: the most any budget can reach on this stream."""
    from qfleet_runtime.prefix_cache import PrefixCache, block_keys, reusable_blocks

    cache, hits, total = PrefixCache(1 << 62), 0, 0
    for ids in token_lists:
        keys = block_keys(ids, block, limit=reusable_blocks(len(ids), block))
        found = cache.lookup(keys)
        hits += found.hits * block
        total += len(ids)
        for key in keys[found.hits:]:
            cache.insert(key, None, 1)
    return hits / total


# -- calibration and evaluation through the runtime's CLI ------------------------------------------------------------

def runtime_cli(args: list[str], summary: Path) -> dict[str, Any]:
    if summary.exists():
        return json.loads(summary.read_text())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*SOURCE_ROOTS[:2], env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "qfleet_runtime", *args, "--summary-file", str(summary)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        summary.unlink(missing_ok=True)
        raise SystemExit(f"qfleet-runtime {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(summary.read_text())


def calibrate(work: Path, fmt: str) -> dict[str, Any]:
    artifacts = work / fmt
    return runtime_cli(["calibrate", "--revision", "bench", "--kv-format", fmt, "--artifacts", str(artifacts),
                        "--model-uri", SMOLLM, "--model-revision", "main", "--weights", "bf16", "--dataset", "builtin",
                        "--samples", str(CALIBRATION["samples"]), "--max-seq-len", str(CALIBRATION["max_seq_len"]),
                        "--analysis-samples", str(CALIBRATION["analysis_samples"]),
                        "--max-layer-kl", CALIBRATION["max_layer_kl"]], work / f"calibrate-{fmt}.json")


def evaluate(work: Path, variant: Variant) -> dict[str, Any]:
    artifacts = work / variant.kv_format
    if not variant.fallback_layers:
        artifacts = without_fallback_layers(artifacts, work / f"{variant.name}-every-layer")
    return runtime_cli(["evaluate", "--revision", "bench", "--kv-format", variant.kv_format,
                        "--artifacts", str(artifacts), "--model-uri", SMOLLM, "--model-revision", "main",
                        "--baseline-kv-format", "bf16", "--eval-tokens", str(EVAL_TOKENS),
                        "--eval-seq-len", str(EVAL_SEQ_LEN)], work / f"evaluate-{variant.name}.json")


def without_fallback_layers(calibrated: Path, into: Path) -> Path:
    """The calibration in `calibrated` with no fallback layers: its report copied with fallbackLayers emptied, the rest
    linked. `evaluate` stores the report's fallback layers in bf16, as `serve` does; this is the plan that keeps every
    layer in the format."""
    from qfleet_runtime.calibrate import REPORT as CALIBRATION_REPORT

    into.mkdir(parents=True, exist_ok=True)
    for entry in calibrated.iterdir():
        target = into / entry.name
        if entry.name == CALIBRATION_REPORT:
            target.write_text(json.dumps(json.loads(entry.read_text()) | {"fallbackLayers": []}, indent=2))
        elif entry.name.startswith("calibrat") and not target.exists():
            target.symlink_to(entry.resolve())
    return into


# -- the machine and the commit ---------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    import torch
    import transformers

    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "memoryGiB": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torchThreads": torch.get_num_threads(),
            "transformers": transformers.__version__}


MEASURED_PATHS = ("runtime_image", "benchmarks/runtime", "operator/qfleet/capacity.py", "operator/qfleet/formats.py",
                  "operator/qfleet/shapes")


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", *MEASURED_PATHS)
    return {"commit": git("rev-parse", "HEAD") or "unknown", "subject": git("log", "-1", "--format=%s"),
            "uncommittedChangesInMeasuredCode": bool(changed)}


# -- the whole benchmark ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work", help="keep calibrations and evaluations here and reuse them (default: a temporary "
                                       "directory, removed at the end)")
    parser.add_argument("--quick", action="store_true", help="a small stream and two budgets (a smoke run)")
    parser.add_argument("--budgets", help="comma-separated budgets in MiB (default: "
                        + ",".join(map(str, BUDGETS_MIB)) + ")")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rewrite runtime-summary.md and runtime.csv from the runtime.json in --out")
    args = parser.parse_args(argv)
    if args.summary_only:
        result = json.loads((Path(args.out) / "runtime.json").read_text())
        result["ratios"] = ratios(result["runs"])
        (Path(args.out) / "runtime.json").write_text(json.dumps(result, indent=1) + "\n")
        write_csv(Path(args.out) / "runtime.csv", result["runs"])
        (Path(args.out) / "runtime-summary.md").write_text(summary_markdown(result))
        return 0
    wall = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="qfleet-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    from qfleet_runtime import engine as eng
    from qfleet_runtime import model_recipe
    from qfleet_runtime.datasets import heldout_text

    host, source = machine(), commit()
    log(f"machine: {host['cores']} cores ({host['cpu']}), {host['memoryGiB']} GiB, torch {host['torch']} "
        f"({host['torchThreads']} threads); commit {source['commit'][:12]}"
        + (" with uncommitted changes in the measured code" if source["uncommittedChangesInMeasuredCode"] else ""))
    model_path = model_recipe.prepare()

    timings: dict[str, float] = {}
    t = time.monotonic()
    calibrations = {}
    for fmt in CALIBRATED:
        calibrations[fmt] = calibrate(work, fmt)
        log(f"calibrated {fmt}: fallback layers {calibrations[fmt]['fallbackLayers']}, "
            f"{calibrations[fmt].get('durationSeconds')} s")
    timings["calibrate"] = time.monotonic() - t
    t = time.monotonic()
    quality: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        if variant.kv_format == "bf16":
            continue
        summary = evaluate(work, variant)
        quality[variant.name] = {key: summary.get(key) for key in (
            "qualityDrop", "score", "baselineScore", "kl", "perplexity", "baselinePerplexity", "top1Agreement",
            "tokens", "bf16Layers")}
        log(f"evaluated {variant.name}: qualityDrop {summary['qualityDrop']}, KL {summary['kl']}")
    base = next(iter(quality.values()))
    quality["bf16"] = {"qualityDrop": 0.0, "score": base["baselineScore"], "baselineScore": base["baselineScore"],
                       "kl": 0.0, "perplexity": base["baselinePerplexity"], "top1Agreement": 1.0,
                       "tokens": base["tokens"], "note": "the baseline of every evaluation"}
    timings["evaluate"] = time.monotonic() - t

    params = stream.StreamParams(conversations=6, system_prompts=3) if args.quick else stream.StreamParams()
    requests = stream.generate(params, heldout_text())
    prompts = [r.prompt for r in requests]
    _, tokenizer = model_recipe.load(model_path)
    token_lists = [[int(i) for i in tokenizer(p, add_special_tokens=False).input_ids] for p in prompts]
    block = eng.DEFAULT_BLOCK_TOKENS
    stream_info = {
        "params": params.describe(),
        "requests": len(requests),
        "promptTokens": sum(map(len, token_lists)),
        "promptTokensMean": sum(map(len, token_lists)) / len(token_lists),
        "promptTokensMax": max(map(len, token_lists)),
        "systemPromptTokens": sorted({len(tokenizer(r.prompt.split("\n\nUser:")[0]).input_ids) for r in requests
                                      if r.turn == 0}),
        "systemPromptUse": [sum(1 for r in requests if r.turn == 0 and r.system == s)
                            for s in range(params.system_prompts)],
        "idealHitRate": ideal_hit_rate(token_lists, block),
        "blockTokens": block,
    }
    log(f"stream: {stream_info['requests']} requests, {stream_info['promptTokens']} prompt tokens "
        f"(mean {stream_info['promptTokensMean']:.0f}, max {stream_info['promptTokensMax']}), unbounded-cache hit rate "
        f"{stream_info['idealHitRate']:.3f}")

    budgets = (BUDGETS_MIB[0], BUDGETS_MIB[-1]) if args.quick else BUDGETS_MIB
    if args.budgets:
        budgets = tuple(float(b) if "." in b else int(b) for b in args.budgets.split(","))
    amax = {fmt: eng.calibrated_amax(work / fmt / "calibrate-report.json", fmt) for fmt in CALIBRATED}
    runs: list[dict[str, Any]] = []
    t = time.monotonic()
    for target in budgets:
        budget, planner = planner_budget(target)
        for variant in VARIANTS:
            scales, fallback = amax.get(variant.kv_format, (None, frozenset()))
            config = eng.EngineConfig(kv_format=variant.kv_format, model_path=model_path, amax=scales,
                                      fallback_layers=fallback if variant.fallback_layers else frozenset(),
                                      prefix_cache_bytes=budget, quality_share=0.0)
            engine = eng.Engine(config)
            engine.warm_up()
            row = {"budgetMiB": target, "budgetBytes": budget, "variant": variant.name, "label": variant.label,
                   "kvFormat": variant.kv_format, "fallbackLayers": sorted(config.fallback_layers),
                   "plannerTokens": planner[variant.kv_format]} | run_stream(engine, prompts)
            row["storeVsPlanner"] = row["storeTokens"] / row["plannerTokens"] - 1
            engine.close()
            del engine
            gc.collect()
            runs.append(row)
            log(f"{target:>4} MiB {variant.name:<9} hit {row['hitRate']:.3f}  TTFT p50 {row['ttftP50'] * 1e3:6.0f} ms "
                f"p99 {row['ttftP99'] * 1e3:6.0f} ms  {row['promptTokensPerSecond']:6.0f} tok/s  store "
                f"{row['storeTokens']} tokens ({row['bytesPerCachedToken'] or 0:.0f} B/token), planner "
                f"{row['plannerTokens']}, {row['evictions']} evictions  ({row['seconds']:.0f} s)")
    timings["sweep"] = time.monotonic() - t
    timings["total"] = time.monotonic() - wall

    result = {"benchmark": "bench-runtime", "model": SMOLLM, "machine": host, "source": source,
              "calibration": CALIBRATION | {"fallbackLayers": {f: c["fallbackLayers"] for f, c in calibrations.items()}},
              "evaluation": {"tokens": EVAL_TOKENS, "seqLen": EVAL_SEQ_LEN}, "quality": quality,
              "stream": stream_info, "maxTokens": MAX_TOKENS, "threads": torch.get_num_threads(),
              "variants": [v.__dict__ for v in VARIANTS], "runs": runs, "ratios": ratios(runs),
              "timings": {k: round(v, 1) for k, v in timings.items()}, "quick": args.quick,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "runtime.json").write_text(json.dumps(result, indent=1) + "\n")
    write_csv(out / "runtime.csv", runs)
    (out / "runtime-summary.md").write_text(summary_markdown(result))
    print((out / "runtime-summary.md").read_text())
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wall time {timings['total']:.0f} s (calibrate {timings['calibrate']:.0f}, evaluate {timings['evaluate']:.0f}, "
        f"sweep {timings['sweep']:.0f}); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
