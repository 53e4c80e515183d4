"""KV entries really stored in the chosen format: packing, unpacking, byte accounting and the fallback decision.

`kvquant` emulates a format (to the stored values and straight back); this module stores them. One `Packed` holds one
layer's keys (or values) for a run of tokens, shape (heads, tokens, head_dim) before packing:

- bf16:  bfloat16, 2 bytes per value.
- fp8:   float8_e4m3fn, 1 byte per value; the layer's FP32 scale (amax / 448) is per tensor.
- int8:  int8 in [-127, 127], 1 byte per value; the per-tensor scale is amax / 127.
- nvfp4: two E2M1 codes per byte (sign bit + index into 0, 0.5, 1, 1.5, 2, 3, 4, 6; low nibble first) and one E4M3
         scale byte per 16 values: 0.5 + 1/16 = 0.5625 bytes per value; the per-tensor FP32 scale is amax / 2688.

Unpacking gives exactly `kvquant.fake_quantize(x, format, amax)` (a test checks it bit for bit), so serving computes
with the values the evaluation measured. Tokens that the calibrated scale cannot hold (any |value| above the
calibrated amax would be clipped) or that the outlier detector flags are kept as bfloat16 beside the packed data,
per head (`fallback_*`: a (token, head) entry of K or V is the unit); their packed codes stay in place, so the
accounting counts both.

Per-tensor scales are a property of the layer (from the calibration report), not of the tokens: `SCALE_BYTES` per
quantized layer, counted once per sequence, the way `qfleet.capacity` counts them (0 per element).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .kvquant import E2M1_GRID, E2M1_MAX, FP8_E4M3_MAX, INT8_MAX, NVFP4_BLOCK, e2m1_index

STORED_FORMATS = ("bf16", "fp8", "int8", "nvfp4")
HIGHER_PRECISION = "bf16"
"""What a fallback token or a fallback layer is kept in."""
SCALE_BYTES = 4
"""One FP32 per-tensor scale (K or V of one layer) for the quantized formats."""
INDEX_BYTES = 4
"""Each fallback entry's position within its Packed run: one int32, token * HEAD_SLOTS + head."""
HEAD_SLOTS = 256


def element_bytes(kv_format: str) -> float:
    """Stored bytes per K or V value, block scales included (the planner's bytes_per_element)."""
    return {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "nvfp4": 0.5 + 1.0 / NVFP4_BLOCK}[kv_format]


@dataclass
class Packed:
    """One layer's K (or V) for `tokens` consecutive tokens, as stored."""

    kv_format: str
    heads: int
    head_dim: int
    amax: float
    """The per-tensor amax the scale comes from (0 for bf16)."""
    data: torch.Tensor
    """bf16/fp8/int8: (heads, tokens, head_dim); nvfp4: uint8 (heads, tokens, head_dim // 2)."""
    block_scales: torch.Tensor | None = None
    """nvfp4 only: E4M3 bytes as uint8, (heads, tokens, head_dim // 16)."""
    fallback_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))
    """Entries (within this run) kept in bf16, as token * HEAD_SLOTS + head."""
    fallback_values: torch.Tensor | None = None
    """bf16 (len(fallback_index), head_dim)."""

    @property
    def tokens(self) -> int:
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes as stored: packed data, block scales, and the fallback copies with their positions."""
        total = self.data.numel() * self.data.element_size()
        if self.block_scales is not None:
            total += self.block_scales.numel()
        if self.fallback_values is not None:
            total += self.fallback_values.numel() * 2 + self.fallback_index.numel() * INDEX_BYTES
        return total


# -- NVFP4 codes ------------------------------------------------------------------------------------------------------

def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (sign << 3 | magnitude index) of the nearest E2M1 value, ties to even, saturating at 6;
    the same rounding as kvquant.round_to_e2m1."""
    index = e2m1_index(x).to(torch.uint8)
    sign = (x.float() < 0).to(torch.uint8) << 3
    return torch.where(index == 0, torch.zeros_like(index), index | sign)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    grid = E2M1_GRID.to(codes.device)
    magnitude = grid[(codes & 0x7).long()]
    return torch.where((codes & 0x8) != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(..., 2n) codes in 0..15 -> (..., n) bytes, element 2i in the low nibble."""
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# -- pack / unpack ----------------------------------------------------------------------------------------------------

def pack(x: torch.Tensor, kv_format: str, amax: float = 0.0, fallback: torch.Tensor | None = None) -> Packed:
    """Stores x (heads, tokens, head_dim) in `kv_format` with the per-tensor `amax`; the (head, token) entries where
    `fallback` (bool, (heads, tokens)) is set are also kept in bf16. bf16 ignores amax and fallback (it is the higher
    precision)."""
    if x.dim() != 3:
        raise ValueError(f"pack expects (heads, tokens, head_dim), got {tuple(x.shape)}")
    heads, tokens, head_dim = x.shape
    if kv_format == "bf16":
        return Packed("bf16", heads, head_dim, 0.0, x.to(torch.bfloat16))
    if kv_format not in STORED_FORMATS:
        raise ValueError(f"no KV storage for format {kv_format!r}: use one of {', '.join(STORED_FORMATS)}")
    if amax <= 0:
        raise ValueError(f"{kv_format} storage needs a positive amax, got {amax}")
    xf = x.float()
    block_scales = None
    if kv_format == "fp8":
        scale = FP8_E4M3_MAX / torch.tensor(amax, dtype=torch.float32)
        data = (xf * scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    elif kv_format == "int8":
        scale = torch.tensor(amax, dtype=torch.float32) / INT8_MAX
        data = torch.round(xf / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        if head_dim % NVFP4_BLOCK or head_dim % 2:
            raise ValueError(f"NVFP4 needs the head dimension ({head_dim}) to be a multiple of {NVFP4_BLOCK}")
        scale2 = torch.tensor(amax, dtype=torch.float32) / (E2M1_MAX * FP8_E4M3_MAX)
        blocks = xf.reshape(heads, tokens, head_dim // NVFP4_BLOCK, NVFP4_BLOCK)
        block_amax = blocks.abs().amax(dim=-1, keepdim=True)
        e4m3 = (block_amax / (E2M1_MAX * scale2)).clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        step = e4m3.float() * scale2
        safe = torch.where(step == 0, torch.ones_like(step), step)
        codes = torch.where(step == 0, torch.zeros_like(blocks, dtype=torch.uint8), e2m1_codes(blocks / safe))
        data = pack_nibbles(codes.reshape(heads, tokens, head_dim))
        block_scales = e4m3.reshape(heads, tokens, head_dim // NVFP4_BLOCK).view(torch.uint8)
    packed = Packed(kv_format, heads, head_dim, float(amax), data, block_scales)
    if fallback is not None and bool(fallback.any()):
        if heads > HEAD_SLOTS:
            raise ValueError(f"at most {HEAD_SLOTS} KV heads per layer, got {heads}")
        head, token = torch.nonzero(fallback, as_tuple=True)
        order = torch.argsort(token * HEAD_SLOTS + head)
        head, token = head[order], token[order]
        packed.fallback_index = (token * HEAD_SLOTS + head).to(torch.int32)
        packed.fallback_values = x[head, token, :].to(torch.bfloat16)
    return packed


def unpack(p: Packed, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values attention gets: (heads, tokens, head_dim) in `dtype`, fallback tokens from their bf16 copy."""
    if p.kv_format == "bf16":
        return p.data.to(dtype)
    amax = torch.tensor(p.amax, dtype=torch.float32)
    if p.kv_format == "fp8":
        scale = FP8_E4M3_MAX / amax
        out = p.data.float() * (1 / scale)
    elif p.kv_format == "int8":
        out = p.data.float() * (amax / INT8_MAX)
    else:
        scale2 = amax / (E2M1_MAX * FP8_E4M3_MAX)
        assert p.block_scales is not None
        step = p.block_scales.view(torch.float8_e4m3fn).float() * scale2
        values = e2m1_values(unpack_nibbles(p.data))
        blocks = values.reshape(p.heads, p.tokens, p.head_dim // NVFP4_BLOCK, NVFP4_BLOCK)
        out = (blocks * step.unsqueeze(-1)).reshape(p.heads, p.tokens, p.head_dim)
    if p.fallback_values is not None and p.fallback_index.numel():
        index = p.fallback_index.long()
        out[index % HEAD_SLOTS, index // HEAD_SLOTS, :] = p.fallback_values.float()
    return out.to(dtype)


def concat(parts: Sequence[Packed]) -> Packed:
    """Runs of the same layer and format, one after the other."""
    if not parts:
        raise ValueError("concat needs at least one run")
    first = parts[0]
    if len(parts) == 1:
        return first
    for p in parts[1:]:
        if (p.kv_format, p.heads, p.head_dim, p.amax) != (first.kv_format, first.heads, first.head_dim, first.amax):
            raise ValueError("concat needs runs of one layer (same format, shape and scale)")
    data = torch.cat([p.data for p in parts], dim=1)
    scales = torch.cat([p.block_scales for p in parts], dim=1) if first.block_scales is not None else None
    out = Packed(first.kv_format, first.heads, first.head_dim, first.amax, data, scales)
    offsets, values, start = [], [], 0
    for p in parts:
        if p.fallback_values is not None and p.fallback_index.numel():
            offsets.append(p.fallback_index + start * HEAD_SLOTS)
            values.append(p.fallback_values)
        start += p.tokens
    if values:
        out.fallback_index = torch.cat(offsets)
        out.fallback_values = torch.cat(values, dim=0)
    return out


def slice_tokens(p: Packed, start: int, stop: int) -> Packed:
    """Tokens [start, stop) of a run, as a run of its own (copies, so the result does not pin the source)."""
    data = p.data[:, start:stop].clone()
    scales = p.block_scales[:, start:stop].clone() if p.block_scales is not None else None
    out = Packed(p.kv_format, p.heads, p.head_dim, p.amax, data, scales)
    if p.fallback_values is not None and p.fallback_index.numel():
        keep = (p.fallback_index >= start * HEAD_SLOTS) & (p.fallback_index < stop * HEAD_SLOTS)
        if bool(keep.any()):
            out.fallback_index = p.fallback_index[keep] - start * HEAD_SLOTS
            out.fallback_values = p.fallback_values[keep].clone()
    return out


# -- the fallback decision --------------------------------------------------------------------------------------------

@dataclass
class OutlierDetector:
    """Flags a token whose K or V magnitude in one layer stands far above that layer's recent tokens.

    Per layer and per K/V it keeps an exponential moving average of the per-token max |x|; after `warmup` tokens, a
    token whose max |x| is above `factor` times that average trips it. Flagged tokens do not update the average, so
    a burst of outliers cannot teach it that outliers are normal. `factor` <= 0 switches it off.
    """

    factor: float = 4.0
    warmup: int = 32
    decay: float = 0.99
    mean: float = 0.0
    seen: int = 0

    def check(self, token_amax: Sequence[float]) -> list[bool]:
        flags = []
        for value in token_amax:
            trip = self.factor > 0 and self.seen >= self.warmup and value > self.factor * self.mean
            if not trip:
                self.mean = value if self.seen == 0 else self.decay * self.mean + (1 - self.decay) * value
                self.seen += 1
            flags.append(trip)
        return flags


def fallback_entries(head_amax: torch.Tensor, limit: float, detector: OutlierDetector | None = None
                     ) -> tuple[torch.Tensor, list[str]]:
    """Which (head, token) entries of one layer's K (or V) keep higher precision, and per token why: "" (none),
    "scale" (an entry above the calibrated amax: only those entries) or "outlier" (the detector flagged the token:
    all its heads). `head_amax` is max |x| per (head, token).

    Above the calibrated amax a value would be clipped: FP8 saturates at 448 = amax / scale, INT8 at 127, and the
    NVFP4 block scale at 448, i.e. a block amax of 6 * 448 * amax / 2688 = amax. So `limit` is the calibrated amax
    (times the fault switch's QFLEET_FAULT_KV_SCALE)."""
    token_amax = head_amax.amax(dim=0).tolist()
    over = head_amax > limit
    outlier = detector.check(token_amax) if detector else [False] * len(token_amax)
    mask = over | torch.tensor(outlier, dtype=torch.bool).unsqueeze(0)
    reasons = ["scale" if bool(over[:, t].any()) else "outlier" if outlier[t] else "" for t in range(len(outlier))]
    return mask, reasons


def merge_reasons(*per_tensor: list[str]) -> list[str]:
    """Per token, the first reason any of the tensors (K, V) gives."""
    return [next((r for r in reasons if r), "") for reasons in zip(*per_tensor)]
