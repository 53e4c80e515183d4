"""`qfleet`: command-line tools around the QuantizedModel API.

qfleet plan --model examples/llama-70b-nvfp4.yaml --gpu B200
qfleet plan --model config.json --gpu H100 --gpus-per-replica 2 --seq-len 32768 -o json
qfleet plan --model ./DeepSeek-V3/ --gpu B200 --gpus-per-replica 8   (config.json + model.safetensors.index.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

from qfleet.api import SpecError
from qfleet.capacity import plan_capacity
from qfleet.cli.inputs import PlanInput, PlanInputError, load_plan_input
from qfleet.cli.render import plan_as_json, render_table
from qfleet.formats import WEIGHT_FORMATS, weight_format
from qfleet.gpus import GPUS, gpu_by_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qfleet", description="Tools for qfleet QuantizedModels.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plan = commands.add_parser(
        "plan",
        help="KV-cache capacity of one replica, for every KV format",
        description="How many tokens of KV cache fit in one serving replica, for every KV-cache format.",
    )
    plan.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="PATH",
        help="a QuantizedModel YAML, a Hugging Face config.json, or a checkpoint directory holding config.json "
        "and model.safetensors.index.json (exact weight bytes)",
    )
    plan.add_argument("--gpu", required=True, metavar="GPU", help=f"one of {', '.join(GPUS)}")
    plan.add_argument(
        "--gpus-per-replica",
        type=_positive_int,
        metavar="N",
        help="GPUs per replica (default: spec.nodePool.gpusPerReplica, or 1)",
    )
    plan.add_argument(
        "--tensor-parallel",
        type=_positive_int,
        metavar="N",
        help="tensor-parallel degree (default: spec.engine.tensorParallel, or all the GPUs)",
    )
    plan.add_argument(
        "--seq-len",
        type=_positive_int,
        metavar="N",
        help="tokens per sequence (default: spec.engine.maxSeqLen, or 8192)",
    )
    plan.add_argument(
        "--weights",
        choices=tuple(WEIGHT_FORMATS),
        help="weight format (default: spec.quantization.weights, the checkpoint's own format, or bf16)",
    )
    plan.add_argument(
        "--kv-memory-fraction",
        type=_fraction,
        metavar="F",
        help="share of the memory left after weights for the KV cache (default: "
        "spec.engine.kvCacheFreeGpuMemoryFraction, or 0.9)",
    )
    plan.add_argument(
        "--parameters",
        type=_positive_int,
        metavar="N",
        help="parameter count, instead of the one qfleet computes from config.json",
    )
    plan.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    parser.print_help(sys.stderr)
    return 2


def _plan(args: argparse.Namespace) -> int:
    gpu = gpu_by_name(args.gpu)
    if gpu is None:
        return _fail(f"unknown GPU {args.gpu!r}: use one of {', '.join(GPUS)}")
    try:
        request = _with_overrides(load_plan_input(args.model, parameter_count=args.parameters), args)
        plan = plan_capacity(
            request.shape,
            gpu,
            request.weights,
            gpus_per_replica=request.gpus_per_replica,
            tensor_parallel=request.tensor_parallel,
            kv_memory_fraction=request.kv_memory_fraction,
            sequence_length=request.sequence_length,
        )
    except SpecError as exc:
        return _fail(f"{args.model} is not a valid QuantizedModel; {exc}")
    except (PlanInputError, ValueError) as exc:
        return _fail(str(exc))
    if args.output == "json":
        print(json.dumps(plan_as_json(plan, request.source, request.requested_kv_formats), indent=2))
    else:
        print(render_table(plan, request.source, request.requested_kv_formats), end="")
    return 0


def _with_overrides(request: PlanInput, args: argparse.Namespace) -> PlanInput:
    """Command-line flags win over what the file says."""
    gpus = args.gpus_per_replica or request.gpus_per_replica
    tensor_parallel = args.tensor_parallel or (request.tensor_parallel if not args.gpus_per_replica else None)
    return replace(
        request,
        gpus_per_replica=gpus,
        tensor_parallel=tensor_parallel,
        sequence_length=args.seq_len or request.sequence_length,
        weights=weight_format(args.weights) if args.weights else request.weights,
        kv_memory_fraction=args.kv_memory_fraction or request.kv_memory_fraction,
    )


def _fail(message: str) -> int:
    print(f"qfleet plan: error: {message}", file=sys.stderr)
    return 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
