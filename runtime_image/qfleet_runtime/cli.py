"""`qfleet-runtime <step> ...`: the container entry point of the operator's runtime Jobs and serving pods.

`serve` (the serving Deployment's command, `qfleet.api.jobs.serve_args`) runs Triton until SIGTERM and exits with
Triton's code; it writes no summary. The steps below end as follows.

The parser accepts exactly the arguments `qfleet.api.jobs.step_invocation` renders (a test renders Jobs and parses
them back here), plus a few optional tuning flags the operator never sets. Every run ends with a compact JSON summary
(<= 4 KiB) in --summary-file (the pod's termination log); a failure writes {"error": "<one line>", ...} there and
exits non-zero: 1 failed, 2 bad arguments (argparse), 3 (or QFLEET_FAULT_EXIT_CODE) injected fault,
4 not implemented in this version, 5 out of memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from qfleet.api.jobs import PROGRAM, Step

from . import prompt_sample
from .common import (EXIT_FAILED, EXIT_NOT_IMPLEMENTED, EXIT_OUT_OF_MEMORY, StepError, Timer, injected_fault,
                     one_line, write_summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, allow_abbrev=False,
                                     description="qfleet's runtime: calibrate, build, evaluate one revision")
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step_parser(step: Step, help_text: str) -> argparse.ArgumentParser:
        sub = steps.add_parser(step.value, help=help_text, allow_abbrev=False)
        sub.add_argument("--revision", required=True)
        sub.add_argument("--kv-format", required=True)
        sub.add_argument("--artifacts", required=True, help="this revision's artifact directory")
        sub.add_argument("--summary-file", required=True, help="where the compact JSON summary goes")
        return sub

    calibrate = step_parser(Step.CALIBRATE, "ModelOpt KV calibration, checkpoint export, per-layer report")
    calibrate.add_argument("--model-uri", required=True)
    calibrate.add_argument("--model-revision", required=True)
    calibrate.add_argument("--weights", required=True)
    calibrate.add_argument("--dataset", required=True)
    calibrate.add_argument("--samples", required=True, type=int)
    calibrate.add_argument("--max-seq-len", required=True, type=int)
    calibrate.add_argument("--max-layer-kl", default=None, help="layers whose KL is above it are fallback layers")
    calibrate.add_argument("--analysis-samples", type=int, default=8,
                           help="(not rendered by the operator) samples used for the per-layer KL analysis")
    calibrate.add_argument("--recent-sample", default=None, metavar="DIR",
                           help="a serving prompt sample (serve --prompt-sample-dir): round(samples * share) samples "
                                "come from its most recent prompts, the rest from --dataset")
    calibrate.add_argument("--recent-share", type=float, default=prompt_sample.DEFAULT_RECENT_SHARE,
                           metavar="FRACTION",
                           help=f"share of --samples taken from --recent-sample (default "
                                f"{prompt_sample.DEFAULT_RECENT_SHARE})")
    calibrate.add_argument("--recent-retention", type=float, default=prompt_sample.DEFAULT_RETENTION_SECONDS,
                           metavar="SECONDS", help="ignore sampled prompts older than this (default "
                                                   f"{prompt_sample.DEFAULT_RETENTION_SECONDS}, 7 days)")

    build = step_parser(Step.BUILD, "Triton model repositories (qfleet backend; TensorRT-LLM LLM-API files) and a manifest")
    build.add_argument("--backend", required=True)
    build.add_argument("--max-batch-size", required=True, type=int)
    build.add_argument("--max-seq-len", required=True, type=int)
    build.add_argument("--max-num-tokens", required=True, type=int)
    build.add_argument("--tensor-parallel", required=True, type=int)
    build.add_argument("--kv-cache-free-gpu-memory-fraction", required=True, type=float)
    build.add_argument("--compute-capability", required=True)
    build.add_argument("--model-uri", help="the model to serve when the format needs no calibration (bf16)")
    build.add_argument("--model-revision", default="main")
    build.add_argument("--calibration", default=None,
                       help="the calibration directory to read (default: --artifacts; the operator passes an earlier "
                            "revision's when this one reuses its calibration)")

    evaluate = step_parser(Step.EVALUATE, "quality of the quantized KV cache against the baseline")
    evaluate.add_argument("--model-uri", required=True)
    evaluate.add_argument("--model-revision", required=True)
    evaluate.add_argument("--baseline-kv-format", required=True)
    evaluate.add_argument("--calibration", default=None,
                          help="the calibration directory to read (default: --artifacts)")
    evaluate.add_argument("--eval-tokens", type=int, default=0,
                          help="(not rendered by the operator) score only the first N held-out tokens; 0: all")
    evaluate.add_argument("--eval-seq-len", type=int, default=512,
                          help="(not rendered by the operator) window length for the held-out text")
    evaluate.add_argument("--eval-text", default=None,
                          help="(not rendered by the operator) a text file to score instead of the held-out text")
    serve = steps.add_parser("serve", allow_abbrev=False,
                             help="Triton serving the built revision (HTTP, gRPC, metrics); runs until SIGTERM")
    serve.add_argument("--revision", required=True)
    serve.add_argument("--kv-format", required=True)
    serve.add_argument("--artifacts", required=True, help="this revision's artifact directory (built)")
    serve.add_argument("--http-port", required=True, type=int)
    serve.add_argument("--grpc-port", required=True, type=int)
    serve.add_argument("--metrics-port", required=True, type=int)
    serve.add_argument("--address", default="0.0.0.0", help="address to listen on (default: all, the pod's)")
    serve.add_argument("--exit-timeout-secs", type=int, default=20, help="Triton's shutdown grace on SIGTERM")
    serve.add_argument("--drain-seconds", type=float, default=5.0,
                       help="on SIGTERM, seconds to keep serving while not ready (the gateway sees the endpoint go) "
                            "before Triton stops; 0: stop at once")
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--cpu", action="store_true", help="run the qfleet Python backend even where the build "
                       "targeted TensorRT-LLM")
    tuning = "(not rendered by the operator; default from the build, or the environment variable named)"
    serve.add_argument("--prefix-cache-bytes", type=int, default=_env_int("QFLEET_PREFIX_CACHE_BYTES"),
                       help=f"prefix-cache byte budget {tuning}: QFLEET_PREFIX_CACHE_BYTES")
    serve.add_argument("--quality-sample-share", type=float, default=_env_float("QFLEET_QUALITY_SAMPLE_SHARE"),
                       help=f"share of requests recomputed with BF16 KV {tuning}: QFLEET_QUALITY_SAMPLE_SHARE")
    serve.add_argument("--outlier-factor", type=float, default=_env_float("QFLEET_OUTLIER_FACTOR"),
                       help=f"outlier detector factor, 0 = off {tuning}: QFLEET_OUTLIER_FACTOR")
    serve.add_argument("--block-tokens", type=int, default=None, help=f"tokens per prefix-cache block {tuning}")
    serve.add_argument("--threads", type=int, default=None, help=f"torch threads in the backend {tuning}")
    serve.add_argument("--prompt-sample-dir", default=None,
                       help="opt-in: keep a bounded sample of served prompts (token ids) in DIR/<hostname>.jsonl for "
                            "re-calibration on recent traffic (default: no sample)")
    serve.add_argument("--prompt-sample-max", type=int, default=prompt_sample.DEFAULT_MAX_ENTRIES,
                       help="most recent distinct prompts kept per pod, and read by calibrate overall "
                            f"(default {prompt_sample.DEFAULT_MAX_ENTRIES})")
    serve.add_argument("--prompt-sample-retention", type=float, default=prompt_sample.DEFAULT_RETENTION_SECONDS,
                       help="seconds a sampled prompt is kept (default "
                            f"{prompt_sample.DEFAULT_RETENTION_SECONDS}, 7 days)")
    return parser


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else None


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    fault = injected_fault(args.step)
    if fault is not None:
        raise fault
    if args.step == Step.CALIBRATE:
        from . import calibrate

        return calibrate.run(args)
    if args.step == Step.EVALUATE:
        from . import evaluate

        return evaluate.run(args)
    from . import build

    return build.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "serve":
        return _serve(args)
    timer = Timer()
    base = {"step": args.step, "kvFormat": args.kv_format, "revision": args.revision}
    try:
        summary = run_step(args)
    except StepError as error:
        return _fail(args, base, timer, str(error), error.exit_code)
    except MemoryError:
        return _fail(args, base, timer, "out of memory (host)", EXIT_OUT_OF_MEMORY)
    except Exception as error:  # noqa: BLE001 - every failure must reach the summary
        if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            return _fail(args, base, timer, f"out of memory: {error}", EXIT_OUT_OF_MEMORY)
        traceback.print_exc()
        return _fail(args, base, timer, f"{type(error).__name__}: {error}", EXIT_FAILED)
    write_summary(args.summary_file, summary)
    print(f"{PROGRAM} {args.step}: done in {timer.seconds} s; summary in {args.summary_file}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Serving has no summary file: it logs to stderr and exits with Triton's exit code (1 when it cannot start)."""
    from . import serve

    try:
        return serve.run(args)
    except StepError as error:
        print(f"{PROGRAM} serve: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code


def _fail(args: argparse.Namespace, base: dict[str, Any], timer: Timer, reason: str, code: int) -> int:
    line = one_line(reason)
    write_summary(args.summary_file, base | {"error": line, "exitCode": code, "durationSeconds": timer.seconds})
    print(f"{PROGRAM} {args.step}: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
