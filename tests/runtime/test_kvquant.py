"""qfleet's KV fake quantization, value by value, and against ModelOpt's own quantizers on CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from qfleet_runtime import kvquant  # noqa: E402


def test_e2m1_grid_is_the_nvfp4_element_set() -> None:
    assert kvquant.E2M1_GRID.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    grid = kvquant.E2M1_GRID
    values = torch.cat([grid, -grid])
    assert torch.equal(kvquant.round_to_e2m1(values), values)


@pytest.mark.parametrize(("value", "expected"), [
    (0.2, 0.0), (0.25, 0.0), (0.3, 0.5), (0.75, 1.0), (1.2, 1.0), (1.25, 1.0), (1.75, 2.0), (2.4, 2.0),
    (2.5, 2.0), (2.6, 3.0), (3.5, 4.0), (4.9, 4.0), (5.0, 4.0), (5.1, 6.0), (6.0, 6.0), (7.0, 6.0), (1e9, 6.0),
    (-0.75, -1.0), (-5.1, -6.0), (-100.0, -6.0),
])
def test_e2m1_rounds_to_nearest_ties_to_even_and_saturates(value: float, expected: float) -> None:
    assert kvquant.round_to_e2m1(torch.tensor([value])).item() == expected


def test_nvfp4_block_with_an_outlier_keeps_the_outlier_and_flushes_small_values() -> None:
    block = torch.full((16,), 0.1)
    block[3] = 6.0  # the outlier sets the block scale to 1: the other values round to the E2M1 grid, 0.1 -> 0
    other = torch.linspace(-1.0, 1.0, 16)  # a second block has its own scale
    x = torch.cat([block, other]).reshape(1, 32)

    q = kvquant.fake_nvfp4(x, amax=6.0)

    assert q[0, 3].item() == 6.0
    assert torch.count_nonzero(q[0, :16]).item() == 1
    # The second block's scale: 1.0 / 6 / (6 / (6 * 448)) = 74.67, which E4M3 rounds down to 72: its step is 72/448
    # and its largest value, 6 * 72/448 = 0.964, sits just under the block's amax (which saturates to it).
    step = 72 / 448
    assert torch.allclose(q[0, 16:], kvquant.round_to_e2m1(other / step) * step)
    assert q[0, 31].item() == pytest.approx(6 * step) and q[0, 16].item() == pytest.approx(-6 * step)


def test_nvfp4_uses_one_e4m3_scale_per_block_of_16() -> None:
    x = torch.randn(4, 64)
    q = kvquant.fake_nvfp4(x)
    amax = x.abs().amax()
    scale2 = amax / (6 * 448)
    for row in range(4):
        for start in range(0, 64, 16):
            block = x[row, start:start + 16]
            step = (block.abs().amax() / (6 * scale2)).to(torch.float8_e4m3fn).float() * scale2
            levels = q[row, start:start + 16] / step
            assert torch.allclose(levels.abs(), kvquant.round_to_e2m1(levels).abs(), atol=1e-4)
            assert levels.abs().max() <= 6.0 + 1e-4


def test_nvfp4_needs_whole_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        kvquant.fake_nvfp4(torch.ones(2, 24))


def test_fp8_saturates_at_amax_and_keeps_representable_values() -> None:
    x = torch.tensor([0.0, 1.0, -2.0, 448.0, 1000.0, -1000.0])
    q = kvquant.fake_fp8_e4m3(x, amax=448.0)
    assert q.tolist() == [0.0, 1.0, -2.0, 448.0, 448.0, -448.0]


def test_fp8_rounds_to_three_mantissa_bits() -> None:
    # Between 16 and 32 the E4M3 step is 2: 17 is a tie (-> 16, even), 17.5 -> 18, 31 -> 32 (tie, even).
    q = kvquant.fake_fp8_e4m3(torch.tensor([17.0, 17.5, 31.0]), amax=448.0)
    assert q.tolist() == [16.0, 18.0, 32.0]


def test_int8_is_symmetric_per_tensor() -> None:
    q = kvquant.fake_int8(torch.tensor([-2.0, -1.0, 0.0, 0.004, 1.0, 2.0, 5.0]), amax=2.0)
    step = 2.0 / 127
    assert q[0].item() == pytest.approx(-2.0) and q[5].item() == pytest.approx(2.0)
    assert q[6].item() == pytest.approx(2.0)  # saturates
    assert q[3].item() == 0.0  # below half a step
    assert q[1].item() == pytest.approx(round(-1.0 / step) * step)


def test_all_zero_tensors_stay_zero() -> None:
    for name in ("fp8", "int8", "nvfp4"):
        assert torch.count_nonzero(kvquant.fake_quantize(torch.zeros(2, 16), name)).item() == 0


def test_bf16_is_rounding_only() -> None:
    x = torch.randn(8, 64)
    assert torch.equal(kvquant.fake_quantize(x, "bf16"), x.to(torch.bfloat16).float())


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="mxfp4"):
        kvquant.fake_quantize(torch.ones(2), "mxfp4")


def test_fp8_equals_modelopt_tensor_quantizer_on_cpu() -> None:
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    torch.manual_seed(0)
    x = torch.randn(2, 3, 57, 64) * 4
    x[0, 0, 0, 0] = 30.0  # beyond amax: both saturate
    quantizer = TensorQuantizer(QuantizerAttributeConfig(num_bits=(4, 3), axis=None), amax=torch.tensor(9.5))

    assert torch.equal(quantizer(x), kvquant.fake_fp8_e4m3(x, 9.5))


def test_nvfp4_equals_modelopt_nvfp4_tensor_on_cpu() -> None:
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    torch.manual_seed(1)
    x = torch.randn(2, 3, 41, 64) * 3
    x[1, 2, 7, 5] = 40.0  # an outlier in one block
    amax = x.abs().amax()
    packed, scale, scale2 = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=amax / (6 * 448))
    reference = packed.dequantize(scale=scale, double_scale=scale2, block_sizes={-1: 16}, dtype=torch.float32)

    assert torch.equal(reference, kvquant.fake_nvfp4(x, amax))
