"""Number formats for the KV cache and for weights: one row per format, exact byte math.

Adding a format means adding a row here (and its name to the CRD's enum, which a unit test
checks). Sizes are `fractions.Fraction` so that bytes-per-token figures are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

AUTO = "auto"
"""The `spec.quantization.kvCache` value that lets the operator pick from `kvCacheLadder`."""

ComputeCapability = tuple[int, int]


@dataclass(frozen=True)
class KvFormat:
    """One way of storing the K and V tensors of the attention cache."""

    name: str
    description: str
    bits_per_element: int
    scale_block: int | None
    """Values that share one block scale along a cached vector; None for per-tensor scales (they count as 0)."""
    scale_bytes: int
    """Bytes of one block scale (0 without block scales)."""
    min_compute_capability: ComputeCapability
    modelopt_config: str | None
    """The `modelopt.torch.quantization` KV preset that calibrates it, if ModelOpt has one."""
    trtllm_kv_cache_quant_algo: str | None
    """`kv_cache_quant_algo` in `hf_quant_config.json`; TensorRT-LLM accepts FP8, INT8, NVFP4."""
    needs_calibration: bool
    selectable: bool
    """Whether `spec.quantization.kvCache` may name it; the others are comparison rows."""

    @property
    def scale_bytes_per_element(self) -> Fraction:
        return Fraction(self.scale_bytes, self.scale_block) if self.scale_block else Fraction(0)

    @property
    def bytes_per_element(self) -> Fraction:
        return Fraction(self.bits_per_element, 8) + self.scale_bytes_per_element

    def vector_bytes(self, values: int) -> Fraction:
        """Bytes of one cached vector of `values` values: a block never spans two vectors, so a
        partial last block still carries a whole scale."""
        blocks = -(-values // self.scale_block) if self.scale_block else 0
        return Fraction(values * self.bits_per_element, 8) + blocks * self.scale_bytes

    def runs_on(self, compute_capability: ComputeCapability) -> bool:
        return compute_capability >= self.min_compute_capability


@dataclass(frozen=True)
class WeightFormat:
    """One way of storing the model's weights (what `spec.quantization.weights` names)."""

    name: str
    description: str
    bytes_per_parameter: Fraction
    min_compute_capability: ComputeCapability
    trtllm_quant_algo: str | None

    def runs_on(self, compute_capability: ComputeCapability) -> bool:
        return compute_capability >= self.min_compute_capability


KV_FORMATS: dict[str, KvFormat] = {
    row.name: row
    for row in (
        KvFormat(
            name="bf16",
            description="bfloat16, the unquantized baseline",
            bits_per_element=16,
            scale_block=None,
            scale_bytes=0,
            min_compute_capability=(8, 0),
            modelopt_config=None,
            trtllm_kv_cache_quant_algo=None,
            needs_calibration=False,
            selectable=True,
        ),
        KvFormat(
            name="fp8",
            description="FP8 E4M3 with one FP32 scale per tensor (scale = amax / 448)",
            bits_per_element=8,
            scale_block=None,
            scale_bytes=0,
            min_compute_capability=(8, 9),
            modelopt_config="FP8_KV_CFG",
            trtllm_kv_cache_quant_algo="FP8",
            needs_calibration=True,
            selectable=True,
        ),
        KvFormat(
            name="int8",
            description="INT8 with one scale per tensor; ModelOpt has no INT8 KV preset, "
            "TensorRT-LLM's quantize.py (--kv_cache_dtype int8) calibrates it",
            bits_per_element=8,
            scale_block=None,
            scale_bytes=0,
            min_compute_capability=(8, 0),
            modelopt_config=None,
            trtllm_kv_cache_quant_algo="INT8",
            needs_calibration=True,
            selectable=True,
        ),
        KvFormat(
            name="nvfp4",
            description="FP4 E2M1 with one E4M3 scale per 16 values (plus one FP32 scale per tensor)",
            bits_per_element=4,
            scale_block=16,
            scale_bytes=1,
            min_compute_capability=(10, 0),
            modelopt_config="NVFP4_KV_CFG",
            trtllm_kv_cache_quant_algo="NVFP4",
            needs_calibration=True,
            selectable=True,
        ),
        KvFormat(
            name="mxfp4",
            description="OCP MX FP4 E2M1 with one E8M0 scale per 32 values; no KV path in "
            "ModelOpt or TensorRT-LLM, listed for comparison",
            bits_per_element=4,
            scale_block=32,
            scale_bytes=1,
            min_compute_capability=(10, 0),
            modelopt_config=None,
            trtllm_kv_cache_quant_algo=None,
            needs_calibration=False,
            selectable=False,
        ),
    )
}

SELECTABLE_KV_FORMATS: tuple[str, ...] = tuple(name for name, row in KV_FORMATS.items() if row.selectable)
"""Formats `kvCache` and `kvCacheLadder` accept, in table order (`auto` is not one of them)."""

BASELINE_KV_FORMAT = "bf16"

WEIGHT_FORMATS: dict[str, WeightFormat] = {
    row.name: row
    for row in (
        WeightFormat(
            name="bf16",
            description="bfloat16, unquantized",
            bytes_per_parameter=Fraction(2),
            min_compute_capability=(8, 0),
            trtllm_quant_algo=None,
        ),
        WeightFormat(
            name="fp8",
            description="FP8 E4M3 weights and activations, per-tensor scales",
            bytes_per_parameter=Fraction(1),
            min_compute_capability=(8, 9),
            trtllm_quant_algo="FP8",
        ),
        WeightFormat(
            name="nvfp4",
            description="FP4 E2M1 weights and activations, one E4M3 scale per 16 values",
            bytes_per_parameter=Fraction(1, 2) + Fraction(1, 16),
            min_compute_capability=(10, 0),
            trtllm_quant_algo="NVFP4",
        ),
        WeightFormat(
            name="int4-awq",
            description="INT4 weights (AWQ), one FP16 scale per group of 128, BF16 activations",
            bytes_per_parameter=Fraction(1, 2) + Fraction(2, 128),
            min_compute_capability=(8, 0),
            trtllm_quant_algo="W4A16_AWQ",
        ),
    )
}


class UnknownFormatError(KeyError):
    """A format name that is not a row of the table."""

    def __init__(self, kind: str, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.message = f"unknown {kind} format {name!r}: use one of {', '.join(known)}"

    def __str__(self) -> str:
        return self.message


def kv_format(name: str) -> KvFormat:
    """The KV format row called `name`."""
    try:
        return KV_FORMATS[name]
    except KeyError:
        raise UnknownFormatError("KV-cache", name, tuple(KV_FORMATS)) from None


def weight_format(name: str) -> WeightFormat:
    """The weight format row called `name`."""
    try:
        return WEIGHT_FORMATS[name]
    except KeyError:
        raise UnknownFormatError("weight", name, tuple(WEIGHT_FORMATS)) from None


def format_compute_capability(capability: ComputeCapability) -> str:
    return f"{capability[0]}.{capability[1]}"
