"""KV-cache fake quantization in plain torch, and the hook that applies it inside a transformers model.

Fake quantization: a tensor goes to the stored format and straight back to float, so that the model computes with
exactly the values a quantized cache would hand to attention. The formats follow `qfleet.formats` and ModelOpt:

- fp8:   FP8 E4M3 (finite max 448), one FP32 scale per tensor, scale = amax / 448, round to nearest even.
- int8:  symmetric INT8 in [-127, 127], one FP32 scale per tensor, scale = amax / 127, round half to even.
- nvfp4: FP4 E2M1 (magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6) in blocks of 16 along the last (head) dimension; each block
         has an FP8 E4M3 scale, the tensor one FP32 scale: scale2 = amax / (6 * 448), block scale =
         e4m3(block_amax / (6 * scale2)), values round to the nearest E2M1 magnitude (ties to even), saturating at 6.
- bf16:  rounding to bfloat16, the unquantized baseline.

`amax` is the calibrated per-tensor maximum |x| (ModelOpt's k_bmm/v_bmm quantizer amax); without one, the tensor's own
maximum is used (a dynamic scale). ModelOpt's own NVFP4 fake-quant kernel needs CUDA; this emulation runs anywhere.

`KvQuantizer` plugs into a transformers model as an attention implementation: it quantizes the key and value states
that the attention kernel receives (after RoPE, with the past already concatenated), which is where ModelOpt's
k_bmm/v_bmm quantizers sit and what a quantized KV cache stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

FP8_E4M3_MAX = 448.0
INT8_MAX = 127.0
E2M1_MAX = 6.0
NVFP4_BLOCK = 16
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
"""Non-negative E2M1 magnitudes; index parity is mantissa parity (even index = even mantissa), for ties to even."""

FAKE_QUANT_FORMATS = ("bf16", "fp8", "int8", "nvfp4")


def _amax(x: torch.Tensor, amax: float | torch.Tensor | None) -> torch.Tensor:
    if amax is None:
        return x.detach().abs().amax().float()
    return torch.as_tensor(amax, dtype=torch.float32, device=x.device)


def fake_fp8_e4m3(x: torch.Tensor, amax: float | torch.Tensor | None = None) -> torch.Tensor:
    a = _amax(x, amax)
    if float(a) == 0.0:
        return torch.zeros_like(x)
    scale = FP8_E4M3_MAX / a  # the same arithmetic as ModelOpt's CPU path (tensor_quant._fp8_eager), bit for bit
    q = (x.float() * scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
    return (q * (1 / scale)).to(x.dtype)


def fake_int8(x: torch.Tensor, amax: float | torch.Tensor | None = None) -> torch.Tensor:
    a = _amax(x, amax)
    if float(a) == 0.0:
        return torch.zeros_like(x)
    scale = a / INT8_MAX
    q = torch.round(x.float() / scale).clamp(-INT8_MAX, INT8_MAX)
    return (q * scale).to(x.dtype)


def e2m1_index(x: torch.Tensor) -> torch.Tensor:
    """Index into E2M1_GRID of the nearest E2M1 magnitude of |x| (ties to even mantissa), saturating at 6."""
    grid = E2M1_GRID.to(x.device)
    a = x.float().abs().clamp(max=E2M1_MAX).contiguous()
    lo = (torch.searchsorted(grid, a, right=True) - 1).clamp(0, len(grid) - 2)
    hi = lo + 1
    take_hi = (grid[hi] - a < a - grid[lo]) | ((grid[hi] - a == a - grid[lo]) & (hi % 2 == 0))
    return torch.where(take_hi, hi, lo)


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 value (ties to even mantissa), saturating at ±6; NaN-free input assumed."""
    return E2M1_GRID.to(x.device)[e2m1_index(x)] * torch.sign(x.float())


def fake_nvfp4(x: torch.Tensor, amax: float | torch.Tensor | None = None, block: int = NVFP4_BLOCK) -> torch.Tensor:
    if x.shape[-1] % block:
        raise ValueError(f"NVFP4 needs the last dimension ({x.shape[-1]}) to be a multiple of {block}")
    a = _amax(x, amax)
    if float(a) == 0.0:
        return torch.zeros_like(x)
    scale2 = a / (E2M1_MAX * FP8_E4M3_MAX)
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    block_amax = blocks.abs().amax(dim=-1, keepdim=True)
    block_scale = (block_amax / (E2M1_MAX * scale2)).clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
    step = block_scale * scale2
    safe = torch.where(step == 0, torch.ones_like(step), step)
    q = torch.where(step == 0, torch.zeros_like(blocks), round_to_e2m1(blocks / safe))
    return (q * step).reshape(x.shape).to(x.dtype)


def fake_bf16(x: torch.Tensor, amax: float | torch.Tensor | None = None) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


FAKE_QUANT: dict[str, Callable[..., torch.Tensor]] = {
    "bf16": fake_bf16, "fp8": fake_fp8_e4m3, "int8": fake_int8, "nvfp4": fake_nvfp4,
}


def fake_quantize(x: torch.Tensor, kv_format: str, amax: float | torch.Tensor | None = None) -> torch.Tensor:
    try:
        return FAKE_QUANT[kv_format](x, amax)
    except KeyError:
        raise ValueError(f"no KV fake quantization for format {kv_format!r}: "
                         f"use one of {', '.join(FAKE_QUANT_FORMATS)}") from None


def relative_error(x: torch.Tensor, q: torch.Tensor) -> float:
    """||q - x|| / ||x|| (0 for an all-zero x)."""
    norm = x.float().norm()
    return 0.0 if float(norm) == 0.0 else float((q.float() - x.float()).norm() / norm)


# -- the hook --------------------------------------------------------------------------------------------------------

ATTN_IMPLEMENTATION = "qfleet_kv"


@dataclass
class LayerPlan:
    kv_format: str = "bf16"
    k_amax: float | None = None
    v_amax: float | None = None


@dataclass
class KvQuantizer:
    """What the registered attention function does, per decoder layer; set `plans` and `capture` between passes."""

    plans: dict[int, LayerPlan] = field(default_factory=dict)
    default: LayerPlan = field(default_factory=LayerPlan)
    noise: float = 0.0
    """Fault injection (QFLEET_FAULT_QUALITY_DROP): Gaussian noise with a standard deviation of this fraction of the
    per-tensor amax, added to every K and V after fake quantization."""
    generator: torch.Generator | None = None
    capture: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
    """Called with (layer, key, value) as the kernel would get them unquantized (calibration statistics)."""

    def apply(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.capture is not None:
            self.capture(layer, key, value)
        plan = self.plans.get(layer, self.default)
        k = fake_quantize(key, plan.kv_format, plan.k_amax)
        v = fake_quantize(value, plan.kv_format, plan.v_amax)
        if self.noise > 0:
            k = k + self._noise(k, plan.k_amax)
            v = v + self._noise(v, plan.v_amax)
        return k, v

    def _noise(self, x: torch.Tensor, amax: float | None) -> torch.Tensor:
        a = float(_amax(x, amax))
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device) * (self.noise * a)


_ACTIVE: list[KvQuantizer] = []


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTN_IMPLEMENTATION in ALL_ATTENTION_FUNCTIONS:
        return
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module, query, key, value, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
        if _ACTIVE:
            key, value = _ACTIVE[-1].apply(int(module.layer_idx), key, value)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention)


def install(model: torch.nn.Module) -> None:
    """Routes the model's attention through the KV fake-quantization hook (a no-op until `active` is entered)."""
    _register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)


@contextmanager
def active(quantizer: KvQuantizer) -> Iterator[KvQuantizer]:
    _ACTIVE.append(quantizer)
    try:
        yield quantizer
    finally:
        _ACTIVE.pop()
