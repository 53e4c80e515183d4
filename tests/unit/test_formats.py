from dataclasses import dataclass
from fractions import Fraction

import pytest

from qfleet.formats import (
    AUTO,
    KV_FORMATS,
    SELECTABLE_KV_FORMATS,
    WEIGHT_FORMATS,
    UnknownFormatError,
    kv_format,
    weight_format,
)


@dataclass(frozen=True)
class FormatRow:
    name: str
    bytes_per_element: Fraction
    min_compute_capability: tuple[int, int]
    modelopt_config: str | None
    trtllm_algo: str | None
    needs_calibration: bool
    selectable: bool


KV_ROWS = [
    FormatRow("bf16", Fraction(2), (8, 0), None, None, False, True),
    FormatRow("fp8", Fraction(1), (8, 9), "FP8_KV_CFG", "FP8", True, True),
    FormatRow("int8", Fraction(1), (8, 0), None, "INT8", True, True),
    FormatRow("nvfp4", Fraction(9, 16), (10, 0), "NVFP4_KV_CFG", "NVFP4", True, True),
    FormatRow("mxfp4", Fraction(17, 32), (10, 0), None, None, False, False),
]


@pytest.mark.parametrize("row", KV_ROWS, ids=lambda row: row.name)
def test_kv_format_row(row: FormatRow) -> None:
    kv = kv_format(row.name)

    assert kv.bytes_per_element == row.bytes_per_element
    assert kv.min_compute_capability == row.min_compute_capability
    assert kv.modelopt_config == row.modelopt_config
    assert kv.trtllm_kv_cache_quant_algo == row.trtllm_algo
    assert kv.needs_calibration == row.needs_calibration
    assert kv.selectable == row.selectable


def test_the_table_has_exactly_these_rows_in_order() -> None:
    assert list(KV_FORMATS) == [row.name for row in KV_ROWS]


def test_nvfp4_is_half_a_byte_plus_one_e4m3_scale_per_16_values() -> None:
    assert kv_format("nvfp4").bytes_per_element == Fraction(1, 2) + Fraction(1, 16) == Fraction("0.5625")


def test_nvfp4_saves_43_75_percent_against_fp8_not_50() -> None:
    saving = 1 - kv_format("nvfp4").bytes_per_element / kv_format("fp8").bytes_per_element

    assert saving == Fraction(7, 16) == Fraction("0.4375")


def test_selectable_formats_exclude_comparison_rows_and_auto() -> None:
    assert SELECTABLE_KV_FORMATS == ("bf16", "fp8", "int8", "nvfp4")
    assert AUTO not in KV_FORMATS


def test_tensorrt_llm_accepts_only_fp8_int8_nvfp4_as_kv_algorithms() -> None:
    algorithms = {row.trtllm_kv_cache_quant_algo for row in KV_FORMATS.values()} - {None}

    assert algorithms == {"FP8", "INT8", "NVFP4"}


@dataclass(frozen=True)
class RunsOnCase:
    reason: str
    format: str
    compute_capability: tuple[int, int]
    runs: bool


RUNS_ON_CASES = [
    RunsOnCase("fp8 needs Ada or newer: A100 is 8.0", "fp8", (8, 0), False),
    RunsOnCase("fp8 runs on L40S (Ada, 8.9)", "fp8", (8, 9), True),
    RunsOnCase("fp8 runs on Hopper", "fp8", (9, 0), True),
    RunsOnCase("nvfp4 does not run on Hopper", "nvfp4", (9, 0), False),
    RunsOnCase("nvfp4 runs on B200 (10.0)", "nvfp4", (10, 0), True),
    RunsOnCase("nvfp4 runs on B300 (10.3)", "nvfp4", (10, 3), True),
    RunsOnCase("int8 runs on Ampere", "int8", (8, 0), True),
    RunsOnCase("bf16 does not run on Turing", "bf16", (7, 5), False),
]


@pytest.mark.parametrize("case", RUNS_ON_CASES, ids=lambda case: case.reason)
def test_format_runs_on_compute_capability(case: RunsOnCase) -> None:
    assert kv_format(case.format).runs_on(case.compute_capability) is case.runs


def test_weight_formats_bytes_per_parameter() -> None:
    sizes = {name: row.bytes_per_parameter for name, row in WEIGHT_FORMATS.items()}

    assert sizes == {
        "bf16": Fraction(2),
        "fp8": Fraction(1),
        "nvfp4": Fraction(9, 16),
        "int4-awq": Fraction(33, 64),
    }


@pytest.mark.parametrize("lookup, name", [(kv_format, "fp4"), (weight_format, "int4")])
def test_unknown_format_names_the_known_ones(lookup, name) -> None:
    with pytest.raises(UnknownFormatError) as raised:
        lookup(name)

    assert name in str(raised.value)
    assert "bf16" in str(raised.value)
