"""The served KV plan as a transformers `Cache`: every layer's K and V really stored in its format (`kvstore`), the
calibration's fallback layers in bf16, and per-entry precision fallbacks. `serve` (engine) and `evaluate` build their
caches here with `build_cache`, so the number that gates a revision is computed on what is served.

Precision fallbacks and the fallback rate. An **entry** is one token's K (or V) vector of one KV head in one
quantized layer: `head_dim` values that are always stored at the same precision. An entry whose max |x| is above the
calibrated amax (what the scale holds without clipping), or whose token the outlier detector flags, is also kept in
bf16 beside its packed codes. `WriteLog` counts the entries written to quantized layers and, of those, the entries
kept at higher precision: their ratio is the fallback rate (`qfleet_kv_fallback_entries_total` over
`qfleet_kv_entries_total`), which, since every entry has the same number of values, is also the share of quantized KV
values held at higher precision. Layers planned at bf16 (`fallbackLayers`) are not quantized and not counted. The
per-token series (a token counts once when any of its quantized-layer entries fell back) is kept beside it.

Out-of-range values. `WriteLog` also counts the K/V values written to quantized layers and, of those, the values whose
|x| is above the calibrated amax (`qfleet_kv_out_of_range_values_total` over `qfleet_kv_values_total`): the share of
traffic the calibration did not cover, the re-calibration drift signal. One vectorised comparison per stored tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from . import kvstore


class WriteLog:
    """What one cache wrote since the last `take`: the tokens that fell back in any layer (positions in the
    sequence, with the reason) and the entry counts of the fallback rate."""

    def __init__(self) -> None:
        self.fallback: dict[int, str] = {}
        self.entries = 0
        self.fallback_entries = 0
        self.values = 0
        self.out_of_range = 0

    def record(self, start: int, reasons: list[str]) -> None:
        for offset, reason in enumerate(reasons):
            if reason and start + offset not in self.fallback:
                self.fallback[start + offset] = reason

    def count(self, mask: torch.Tensor) -> None:
        """One quantized tensor's (head, token) fallback mask: all its entries were written, the true ones fell back."""
        self.entries += int(mask.numel())
        self.fallback_entries += int(mask.sum())

    def count_values(self, magnitudes: torch.Tensor, amax: float) -> None:
        """One quantized tensor's |x|: all its values were written, those above `amax` were out of range."""
        self.values += int(magnitudes.numel())
        self.out_of_range += int((magnitudes > amax).sum())

    def take_values(self) -> tuple[int, int]:
        """(values written to quantized layers, values above the calibrated amax) since the last call."""
        out = (self.values, self.out_of_range)
        self.values = self.out_of_range = 0
        return out

    def take(self) -> dict[int, str]:
        out, self.fallback = self.fallback, {}
        return out

    def take_entries(self) -> tuple[int, int]:
        """(entries written to quantized layers, entries kept at higher precision) since the last call."""
        out = (self.entries, self.fallback_entries)
        self.entries = self.fallback_entries = 0
        return out


class StoredLayer(DynamicLayer):
    """One decoder layer's K and V, packed in `kv_format`; attention gets them dequantized."""

    def __init__(self, index: int, kv_format: str, k_amax: float, v_amax: float, log_: WriteLog,
                 detectors: tuple[kvstore.OutlierDetector, kvstore.OutlierDetector] | None,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.index, self.kv_format = index, kv_format
        self.k_amax, self.v_amax = k_amax, v_amax
        self.log, self.detectors = log_, detectors
        self.noise, self.generator = noise, generator
        self.k: kvstore.Packed | None = None
        self.v: kvstore.Packed | None = None
        self._k_work: torch.Tensor | None = None
        self._v_work: torch.Tensor | None = None
        """What attention reads: the stored values dequantized, one new run at a time (a GPU kernel dequantizes
        tile by tile on the fly; on CPU this scratch copy of the request in flight keeps a decode step from
        dequantizing the whole cache again). Never counted in the bytes: `k` and `v` are what is stored."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def load(self, k: kvstore.Packed, v: kvstore.Packed, dtype: torch.dtype = torch.float32) -> None:
        """Starts the layer from stored runs (prefix-cache blocks), before any update."""
        self.k, self.v = k, v
        self._k_work, self._v_work = kvstore.unpack(k, dtype)[None], kvstore.unpack(v, dtype)[None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != 1:
            raise ValueError("the qfleet engine stores one sequence per cache (batch 1)")
        k, v = key_states[0], value_states[0]
        start = self.get_seq_length()
        k_mask = v_mask = None
        # amax 0: dynamic scales (evaluate without a calibration), each write's own amax; nothing exceeds it.
        k_amax = self.k_amax or max(float(k.abs().max()), 1e-12)
        v_amax = self.v_amax or max(float(v.abs().max()), 1e-12)
        if self.kv_format != "bf16":
            k_detector, v_detector = self.detectors or (None, None)
            k_abs, v_abs = k.abs(), v.abs()
            k_mask, k_reasons = kvstore.fallback_entries(k_abs.amax(dim=-1), k_amax, k_detector)
            v_mask, v_reasons = kvstore.fallback_entries(v_abs.amax(dim=-1), v_amax, v_detector)
            self.log.record(start, kvstore.merge_reasons(k_reasons, v_reasons))
            self.log.count(k_mask)
            self.log.count(v_mask)
            self.log.count_values(k_abs, k_amax)
            self.log.count_values(v_abs, v_amax)
            if self.noise > 0:
                k = k + torch.randn(k.shape, generator=self.generator) * (self.noise * k_amax)
                v = v + torch.randn(v.shape, generator=self.generator) * (self.noise * v_amax)
        pk = kvstore.pack(k, self.kv_format, k_amax, k_mask)
        pv = kvstore.pack(v, self.kv_format, v_amax, v_mask)
        self.k = pk if self.k is None else kvstore.concat([self.k, pk])
        self.v = pv if self.v is None else kvstore.concat([self.v, pv])
        dtype = key_states.dtype
        new_k, new_v = kvstore.unpack(pk, dtype)[None], kvstore.unpack(pv, dtype)[None]
        self._k_work = new_k if self._k_work is None else torch.cat([self._k_work, new_k], dim=-2)
        self._v_work = new_v if self._v_work is None else torch.cat([self._v_work, new_v], dim=-2)
        return self._k_work, self._v_work

    def get_seq_length(self) -> int:
        return 0 if self.k is None else self.k.tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.k = self.v = None
        self._k_work = self._v_work = None
        self.is_initialized = False

    @property
    def nbytes(self) -> int:
        scales = 2 * kvstore.SCALE_BYTES if self.kv_format != "bf16" else 0
        return (0 if self.k is None else self.k.nbytes + self.v.nbytes + scales)  # type: ignore[union-attr]


class StoredCache(Cache):
    """A transformers Cache of `StoredLayer`s: one sequence's KV cache, really stored in its format."""

    def __init__(self, layers: list[StoredLayer], log_: WriteLog) -> None:
        super().__init__(layers=layers)  # type: ignore[arg-type]
        self.write_log = log_

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)  # type: ignore[attr-defined]

    def block(self, start: int, stop: int) -> tuple[list[tuple[kvstore.Packed, kvstore.Packed]], int]:
        """Tokens [start, stop) of every layer as a prefix-cache payload, and its bytes."""
        payload, nbytes = [], 0
        for layer in self.layers:
            k = kvstore.slice_tokens(layer.k, start, stop)  # type: ignore[attr-defined]
            v = kvstore.slice_tokens(layer.v, start, stop)  # type: ignore[attr-defined]
            payload.append((k, v))
            nbytes += k.nbytes + v.nbytes
        return payload, nbytes

    def load_blocks(self, blocks: list[list[tuple[kvstore.Packed, kvstore.Packed]]]) -> None:
        for index, layer in enumerate(self.layers):
            ks = [block[index][0] for block in blocks]
            vs = [block[index][1] for block in blocks]
            layer.load(kvstore.concat(ks), kvstore.concat(vs))  # type: ignore[attr-defined]


def build_cache(layers: int, kv_format: str, amax: Sequence[tuple[float, float]] | None,
                fallback_layers: frozenset[int] = frozenset(), kv_scale: float = 1.0,
                detectors: Sequence[tuple[kvstore.OutlierDetector, kvstore.OutlierDetector]] | None = None,
                noise: float = 0.0, generator: torch.Generator | None = None) -> StoredCache:
    """An empty cache of the served plan: layer i in `kv_format` with the calibrated (k_amax, v_amax) times
    `kv_scale`, or in bf16 when i is a fallback layer (or the format is bf16). `amax` None: each write's own amax
    (evaluate without a calibration; serve always has one)."""
    write_log = WriteLog()
    stored = []
    for i in range(layers):
        layer_fmt = kvstore.HIGHER_PRECISION if i in fallback_layers else kv_format
        if layer_fmt == "bf16":
            stored.append(StoredLayer(i, "bf16", 0.0, 0.0, write_log, None))
            continue
        k_amax, v_amax = amax[i] if amax is not None else (0.0, 0.0)  # None: dynamic scales (evaluate only)
        stored.append(StoredLayer(i, layer_fmt, k_amax * kv_scale, v_amax * kv_scale, write_log,
                                  detectors[i] if detectors else None, noise, generator))
    return StoredCache(stored, write_log)
