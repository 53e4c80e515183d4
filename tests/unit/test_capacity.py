from dataclasses import dataclass
from fractions import Fraction

import pytest

from qfleet.capacity import kv_bytes_per_token, plan_capacity, stored_kv_heads, weight_bytes
from qfleet.formats import kv_format, weight_format
from qfleet.gpus import GPUS
from qfleet.shapes import KNOWN_SHAPES

LLAMA_70B = KNOWN_SHAPES["hf://meta-llama/Llama-3.3-70B-Instruct"]
SMOLLM2 = KNOWN_SHAPES["hf://HuggingFaceTB/SmolLM2-135M-Instruct"]


@pytest.mark.parametrize(
    "format_name, bytes_per_token",
    [("bf16", 327_680), ("fp8", 163_840), ("int8", 163_840), ("nvfp4", 92_160), ("mxfp4", 87_040)],
)
def test_llama_70b_kv_bytes_per_token(format_name: str, bytes_per_token: int) -> None:
    assert kv_bytes_per_token(LLAMA_70B, kv_format(format_name)) == bytes_per_token


def test_weight_bytes_are_parameters_times_format_size() -> None:
    assert weight_bytes(LLAMA_70B, weight_format("bf16")) == 141_107_412_992
    assert weight_bytes(LLAMA_70B, weight_format("nvfp4")) == 39_686_459_904


def test_b200_replica_for_nvfp4_weights() -> None:
    plan = plan_capacity(LLAMA_70B, GPUS["B200"], weight_format("nvfp4"), gpus_per_replica=8, sequence_length=65_536)

    total = 8 * 183_359 * 2**20
    kv_cache = (total - 39_686_459_904) * 9 // 10
    assert plan.memory.total_bytes == total
    assert plan.memory.kv_cache_bytes == kv_cache
    nvfp4 = plan.for_format("nvfp4")
    assert nvfp4.tokens_per_replica == kv_cache // 92_160
    assert nvfp4.sequences_per_replica == nvfp4.tokens_per_replica // 65_536
    assert nvfp4.runs_on_gpu
    assert plan.weights_fit and plan.warnings == ()


def test_every_format_is_planned_in_table_order() -> None:
    plan = plan_capacity(LLAMA_70B, GPUS["H200"], weight_format("fp8"), gpus_per_replica=4)

    assert [row.kv_format.name for row in plan.formats] == ["bf16", "fp8", "int8", "nvfp4", "mxfp4"]
    assert plan.for_format("fp8").tokens_per_replica == 2 * plan.for_format("bf16").tokens_per_replica
    assert plan.for_format("nvfp4").saving_vs_baseline == Fraction(23, 32)


@dataclass(frozen=True)
class RunsCase:
    reason: str
    gpu: str
    runs: dict[str, bool]


RUNS_CASES = [
    RunsCase("Hopper runs fp8, not nvfp4", "H100", {"fp8": True, "nvfp4": False, "int8": True}),
    RunsCase("Ampere runs neither fp8 nor nvfp4", "A100", {"fp8": False, "nvfp4": False, "bf16": True}),
    RunsCase("Blackwell runs everything", "GB200", {"fp8": True, "nvfp4": True, "mxfp4": True}),
]


@pytest.mark.parametrize("case", RUNS_CASES, ids=lambda case: case.reason)
def test_plan_marks_formats_the_gpu_cannot_run(case: RunsCase) -> None:
    plan = plan_capacity(LLAMA_70B, GPUS[case.gpu], weight_format("bf16"), gpus_per_replica=8)

    assert {name: plan.for_format(name).runs_on_gpu for name in case.runs} == case.runs


def test_weights_that_do_not_fit_are_an_answer_not_an_error() -> None:
    plan = plan_capacity(LLAMA_70B, GPUS["L40S"], weight_format("bf16"), gpus_per_replica=1)

    assert not plan.weights_fit
    assert plan.memory.free_bytes < 0
    assert plan.memory.kv_cache_bytes == 0
    assert all(row.tokens_per_replica == 0 for row in plan.formats)
    assert any("do not fit" in warning and "more GPUs per replica" in warning for warning in plan.warnings)


def test_weight_format_the_gpu_cannot_run_is_warned() -> None:
    plan = plan_capacity(LLAMA_70B, GPUS["H100"], weight_format("nvfp4"), gpus_per_replica=8)

    assert any("nvfp4 weights need compute capability 10.0; H100 has 9.0" in warning for warning in plan.warnings)


def test_tensor_parallel_wider_than_kv_heads_replicates_heads() -> None:
    assert stored_kv_heads(3, 8) == 8
    assert stored_kv_heads(8, 8) == 8
    assert stored_kv_heads(8, 3) == 9
    wide = plan_capacity(SMOLLM2, GPUS["H100"], weight_format("bf16"), gpus_per_replica=8)
    narrow = plan_capacity(SMOLLM2, GPUS["H100"], weight_format("bf16"), gpus_per_replica=8, tensor_parallel=1)

    assert wide.for_format("bf16").kv_bytes_per_token == narrow.for_format("bf16").kv_bytes_per_token == 23_040
    budget = wide.memory.kv_cache_bytes
    assert wide.for_format("bf16").tokens_per_replica == budget * 3 // (23_040 * 8)
    assert narrow.for_format("bf16").tokens_per_replica == budget // 23_040
    assert any("stores 8 heads" in warning for warning in wide.warnings)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus_per_replica": 8, "tensor_parallel": 3}, "must divide"),
        ({"gpus_per_replica": 0}, "at least 1"),
        ({"kv_memory_fraction": Fraction(0)}, "above 0"),
        ({"kv_memory_fraction": Fraction(3, 2)}, "at most 1"),
        ({"sequence_length": 0}, "sequence length"),
    ],
)
def test_impossible_inputs_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_capacity(LLAMA_70B, GPUS["B200"], weight_format("bf16"), **kwargs)


def test_kv_memory_fraction_is_exact() -> None:
    plan = plan_capacity(SMOLLM2, GPUS["A100"], weight_format("bf16"), kv_memory_fraction=Fraction(1, 3))

    assert plan.memory.kv_cache_bytes == plan.memory.free_bytes // 3
