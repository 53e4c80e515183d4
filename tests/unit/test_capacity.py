from dataclasses import dataclass
from fractions import Fraction

import pytest

from qfleet.capacity import (
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    mixed_kv_bytes_per_token,
    plan_capacity,
    weight_bytes,
)
from qfleet.formats import kv_format, weight_format
from qfleet.gpus import GPUS
from qfleet.shapes import KNOWN_SHAPES, CacheGroup, CacheKind, Checkpoint, ModelShape

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
    def heads(kv_heads: int) -> CacheGroup:
        return CacheGroup(CacheKind.FULL, 1, kv_heads, (64, 64))

    assert heads(3).stored_heads(8) == 8
    assert heads(8).stored_heads(8) == 8
    assert heads(8).stored_heads(3) == 9
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


DEEPSEEK_V3 = KNOWN_SHAPES["hf://deepseek-ai/DeepSeek-V3"]
GPT_OSS_120B = KNOWN_SHAPES["hf://openai/gpt-oss-120b"]
GEMMA3_27B = KNOWN_SHAPES["hf://google/gemma-3-27b-it"]
QWEN3_NEXT = KNOWN_SHAPES["hf://Qwen/Qwen3-Next-80B-A3B-Instruct"]


@dataclass(frozen=True)
class PerTokenCase:
    reason: str
    shape: ModelShape
    sequence_length: int
    bytes_per_token: dict[str, Fraction]


# Hand-worked: values per token per layer x layers x bytes per value; nvfp4 adds one byte per 16 values.
PER_TOKEN_CASES = [
    PerTokenCase(
        "MLA: one 512 + 64 latent per layer, not a K and V per head",
        DEEPSEEK_V3,
        8192,
        {
            "bf16": Fraction(61 * (512 + 64) * 2),
            "fp8": Fraction(61 * (512 + 64) * 1),
            "nvfp4": Fraction(61 * ((512 + 64) // 2 + (512 // 16 + 64 // 16))),
            "mxfp4": Fraction(61 * ((512 + 64) // 2 + (512 // 32 + 64 // 32))),
        },
    ),
    PerTokenCase(
        "gpt-oss: 18 full layers hold all 8192 tokens, 18 window layers 128 of them",
        GPT_OSS_120B,
        8192,
        {
            "bf16": Fraction(18 * 2 * 8 * 64 * 2 * 8192 + 18 * 2 * 8 * 64 * 2 * 128, 8192),
            "nvfp4": Fraction(18 * 2 * 8 * (32 + 4) * 8192 + 18 * 2 * 8 * (32 + 4) * 128, 8192),
        },
    ),
    PerTokenCase(
        "gpt-oss inside the window: every layer holds the token",
        GPT_OSS_120B,
        128,
        {"fp8": Fraction(36 * 2 * 8 * 64)},
    ),
    PerTokenCase(
        "Gemma 3 27B: 10 global layers, 52 layers with a 1024-token window",
        GEMMA3_27B,
        32768,
        {"fp8": Fraction(10 * 2 * 16 * 128 * 32768 + 52 * 2 * 16 * 128 * 1024, 32768)},
    ),
    PerTokenCase(
        "Qwen3-Next: 12 attention layers grow; 36 linear layers hold one bf16 state per sequence",
        QWEN3_NEXT,
        65536,
        {
            "fp8": Fraction(12 * 2 * 2 * 256 * 65536 + 36 * 32 * (128 * 128 + 3 * 8192 // 32) * 2, 65536),
            "nvfp4": Fraction(
                12 * 2 * 2 * (128 + 16) * 65536 + 36 * 32 * (128 * 128 + 3 * 8192 // 32) * 2, 65536
            ),
        },
    ),
]


@pytest.mark.parametrize("case", PER_TOKEN_CASES, ids=lambda case: case.reason)
def test_kv_bytes_per_token_by_attention_kind(case: PerTokenCase) -> None:
    for name, expected in case.bytes_per_token.items():
        assert kv_bytes_per_token(case.shape, kv_format(name), case.sequence_length) == expected, name


def test_without_a_length_every_attention_layer_holds_the_token_and_states_are_left_out() -> None:
    assert kv_bytes_per_token(GPT_OSS_120B, kv_format("bf16")) == 36 * 2 * 8 * 64 * 2
    assert kv_bytes_per_token(QWEN3_NEXT, kv_format("bf16")) == 12 * 2 * 2 * 256 * 2


def test_smollm2_bytes_per_token_stay_what_the_runtime_measures() -> None:
    assert kv_bytes_per_token(SMOLLM2, kv_format("bf16")) == 30 * 2 * 3 * 64 * 2 == 23_040
    assert kv_bytes_per_token(SMOLLM2, kv_format("nvfp4")) == 30 * 2 * 3 * (32 + 4) == 6_480


def test_a_partial_scale_block_still_carries_a_whole_scale() -> None:
    odd = ModelShape(cache=(CacheGroup(CacheKind.FULL, 1, 1, (80, 80)),), parameter_count=1)

    assert kv_bytes_per_token(odd, kv_format("mxfp4")) == 2 * (40 + 3)  # 80 values: blocks of 32, 32, 16
    assert kv_bytes_per_token(odd, kv_format("nvfp4")) == 2 * (40 + 5)


def test_tensor_parallelism_copies_the_mla_latent_on_every_gpu() -> None:
    plan = plan_capacity(DEEPSEEK_V3, GPUS["B200"], weight_format("nvfp4"), gpus_per_replica=8)

    nvfp4 = plan.for_format("nvfp4")
    per_token = 61 * (288 + 36)
    assert nvfp4.kv_bytes_per_token == per_token
    assert nvfp4.kv_bytes_per_token_per_gpu == per_token  # 8 copies spread over 8 GPUs
    assert nvfp4.tokens_per_replica == plan.memory.kv_cache_bytes // (8 * per_token)
    assert kv_bytes_per_sequence(DEEPSEEK_V3, kv_format("nvfp4"), 8192, tensor_parallel=8) == 8 * per_token * 8192
    assert any("does not split the MLA latent" in warning for warning in plan.warnings)


def test_tensor_parallelism_splits_kv_heads_per_gpu() -> None:
    plan = plan_capacity(LLAMA_70B, GPUS["B200"], weight_format("nvfp4"), gpus_per_replica=8)

    assert plan.for_format("nvfp4").kv_bytes_per_token_per_gpu == 92_160 // 8


def test_sequences_of_a_hybrid_model_count_its_states_once_each() -> None:
    plan = plan_capacity(QWEN3_NEXT, GPUS["B200"], weight_format("fp8"), gpus_per_replica=4, sequence_length=65536)

    per_sequence = 12 * 2 * 2 * 256 * 65536 + 36 * 32 * 17152 * 2
    stored = 12 * 4 * 2 * 256 * 65536 + 36 * 32 * 17152 * 2  # tp 4 keeps 4 copies' worth of the 2 KV heads
    fp8 = plan.for_format("fp8")
    assert kv_bytes_per_sequence(QWEN3_NEXT, kv_format("fp8"), 65536) == per_sequence
    assert fp8.sequences_per_replica == plan.memory.kv_cache_bytes // stored
    assert fp8.tokens_per_replica == plan.memory.kv_cache_bytes * 65536 // stored
    assert any("wider than the 2 KV heads" in warning for warning in plan.warnings)


def test_a_checkpoint_in_the_planned_format_weighs_exactly_its_index_total() -> None:
    shape = ModelShape(DEEPSEEK_V3.cache, DEEPSEEK_V3.parameter_count, Checkpoint("fp8", 688_586_727_753))

    assert weight_bytes(shape, weight_format("fp8")) == 688_586_727_753
    assert weight_bytes(shape, weight_format("nvfp4")) == 671_026_419_200 * 9 // 16  # whole: 16 divides the count


SMOLLM = KNOWN_SHAPES["hf://HuggingFaceTB/SmolLM2-135M-Instruct"]


@pytest.mark.parametrize(("fmt", "higher", "layers", "expected"), [
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 x (K, V): 384 values a layer; bf16 768 B, fp8 384 B, nvfp4 216 B.
    ("nvfp4", "bf16", 0, 6_480),
    ("nvfp4", "bf16", 2, 28 * 216 + 2 * 768),
    ("nvfp4", "fp8", 4, 26 * 216 + 4 * 384),
    ("nvfp4", "bf16", 30, 23_040),
    ("fp8", "bf16", 3, 27 * 384 + 3 * 768),
])
def test_a_mixed_plan_costs_its_fallback_layers_exactly(fmt: str, higher: str, layers: int, expected: int) -> None:
    assert mixed_kv_bytes_per_token(SMOLLM, kv_format(fmt), kv_format(higher), layers) == expected
    if layers == 0:
        assert mixed_kv_bytes_per_token(SMOLLM, kv_format(fmt), kv_format(higher), 0) == kv_bytes_per_token(
            SMOLLM, kv_format(fmt))


def test_a_mixed_plan_refuses_more_fallback_layers_than_the_model_has() -> None:
    with pytest.raises(ValueError):
        mixed_kv_bytes_per_token(SMOLLM, kv_format("nvfp4"), kv_format("bf16"), 31)
