"""The qfleet serving engine (CPU path): greedy generation with the KV cache stored in the chosen format.

It runs inside Triton's Python backend (`triton_model`), but knows nothing of Triton: it reports to a
`serving_metrics.Sink`, so tests drive it directly too.

- **Storage.** `StoredCache` is a transformers `Cache` whose layers keep K and V packed (`kvstore`: bf16, fp8, int8,
  nvfp4 with its block scales) and hand attention the dequantized values; `nbytes` is what is really held.
- **Fallbacks.** Per layer and token: K or V above the calibrated amax (what the scale can hold without clipping),
  or flagged by the layer's outlier detector, is kept in bf16 beside the packed codes. Layers in the calibration
  report's `fallbackLayers` are stored in bf16 altogether. A token counts once in `qfleet_kv_fallback_tokens_total`
  when any of its quantized-layer entries fell back.
- **Prefix cache.** Prompt K/V in blocks of `block_tokens`, keyed by the whole prefix, LRU within a byte budget
  (`prefix_cache`); blocks are kept packed, so the same budget holds about 3.5x more NVFP4 blocks than BF16.
- **Live quality.** A share of requests is recomputed in a background thread with BF16 KV (teacher forcing on the
  generated tokens); the mean next-token KL and the top-1 agreement go to the quality histograms.
- **Fault switch** (environment): QFLEET_FAULT_LATENCY_SECONDS adds latency to every request;
  QFLEET_FAULT_KV_SCALE multiplies the calibrated K/V amax (below 1: a stale calibration, values pass the scale and
  the fallback rate rises); QFLEET_FAULT_QUALITY_DROP adds Gaussian noise (std x * amax) to K and V as they are
  stored, as the evaluate step does, so the live KL rises.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from qfleet.api import metrics as m

from . import kvstore, model_recipe
from .prefix_cache import PrefixCache, block_keys, reusable_blocks
from .serving_metrics import RecordingSink, Sink

log = logging.getLogger("qfleet.serve")

FAULT_LATENCY = "QFLEET_FAULT_LATENCY_SECONDS"
FAULT_KV_SCALE = "QFLEET_FAULT_KV_SCALE"
FAULT_QUALITY_DROP = "QFLEET_FAULT_QUALITY_DROP"
DEFAULT_BLOCK_TOKENS = 16
DEFAULT_PREFIX_CACHE_BYTES = 64 << 20
DEFAULT_QUALITY_SHARE = 0.1
DEFAULT_OUTLIER_FACTOR = 0.0
QUALITY_QUEUE = 8


class ServeError(Exception):
    """A request or configuration the engine refuses, with a one-line reason."""


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServeError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ServeError(f"{name}={raw!r} must be a finite number of at least {minimum}")
    return value


@dataclass(frozen=True)
class Faults:
    latency_seconds: float = 0.0
    kv_scale: float = 1.0
    quality_noise: float = 0.0

    @classmethod
    def from_env(cls) -> Faults:
        scale = _env_float(FAULT_KV_SCALE, 1.0)
        if scale <= 0:
            raise ServeError(f"{FAULT_KV_SCALE} must be above 0")
        return cls(_env_float(FAULT_LATENCY, 0.0), scale, _env_float(FAULT_QUALITY_DROP, 0.0))


@dataclass(frozen=True)
class EngineConfig:
    kv_format: str
    model_path: Path
    amax: tuple[tuple[float, float], ...] | None
    """Calibrated (k_amax, v_amax) per layer; None for bf16."""
    fallback_layers: frozenset[int] = frozenset()
    max_seq_len: int = 2048
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR
    quality_share: float = DEFAULT_QUALITY_SHARE
    faults: Faults = field(default_factory=Faults)
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""


def calibrated_amax(report_path: Path, kv_format: str) -> tuple[tuple[tuple[float, float], ...], frozenset[int]]:
    """Per-layer (k_amax, v_amax) and the fallback layers from a calibration report of this format."""
    if not report_path.is_file():
        raise ServeError(f"no calibration report at {report_path}: {kv_format} needs the calibrated scales")
    report = json.loads(report_path.read_text())
    if report.get("kvFormat") != kv_format:
        raise ServeError(f"{report_path} is a {report.get('kvFormat')} calibration, not {kv_format}")
    rows = report.get("layers") or []
    if not rows or any(r.get("kAmax") is None or r.get("vAmax") is None for r in rows):
        raise ServeError(f"{report_path} has no per-layer amax")
    return (tuple((float(r["kAmax"]), float(r["vAmax"])) for r in rows),
            frozenset(int(i) for i in report.get("fallbackLayers") or ()))


# -- the cache --------------------------------------------------------------------------------------------------------

class WriteLog:
    """Which new tokens fell back, in any layer, during one forward pass (positions in the sequence)."""

    def __init__(self) -> None:
        self.fallback: dict[int, str] = {}

    def record(self, start: int, reasons: list[str]) -> None:
        for offset, reason in enumerate(reasons):
            if reason and start + offset not in self.fallback:
                self.fallback[start + offset] = reason

    def take(self) -> dict[int, str]:
        out, self.fallback = self.fallback, {}
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
            raise ServeError("the qfleet engine stores one sequence per cache (batch 1)")
        k, v = key_states[0], value_states[0]
        start = self.get_seq_length()
        k_mask = v_mask = None
        if self.kv_format != "bf16":
            k_detector, v_detector = self.detectors or (None, None)
            k_mask, k_reasons = kvstore.fallback_entries(k.abs().amax(dim=-1), self.k_amax, k_detector)
            v_mask, v_reasons = kvstore.fallback_entries(v.abs().amax(dim=-1), self.v_amax, v_detector)
            self.log.record(start, kvstore.merge_reasons(k_reasons, v_reasons))
            if self.noise > 0:
                k = k + torch.randn(k.shape, generator=self.generator) * (self.noise * self.k_amax)
                v = v + torch.randn(v.shape, generator=self.generator) * (self.noise * self.v_amax)
        pk = kvstore.pack(k, self.kv_format, self.k_amax, k_mask)
        pv = kvstore.pack(v, self.kv_format, self.v_amax, v_mask)
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


# -- the engine -------------------------------------------------------------------------------------------------------

@dataclass
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int
    prefix_hits: int
    prefix_misses: int
    fallback_tokens: int
    kv_bytes: int
    kv_tokens: int
    ttft: float
    duration: float
    sampled: bool = False


class Engine:
    def __init__(self, config: EngineConfig, sink: Sink | None = None, model_name: str = "qfleet") -> None:
        if config.kv_format not in kvstore.STORED_FORMATS:
            raise ServeError(f"KV format {config.kv_format} cannot be served by the qfleet backend "
                             f"(one of {', '.join(kvstore.STORED_FORMATS)})")
        if config.kv_format != "bf16" and config.amax is None:
            raise ServeError(f"KV format {config.kv_format} needs calibrated scales")
        self.config = config
        self.sink = sink or RecordingSink()
        self.model_name = model_name
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(0)
        self.model, self.tokenizer = model_recipe.load(config.model_path)
        self.model.set_attn_implementation("sdpa")
        self.layers = int(self.model.config.num_hidden_layers)
        if config.amax is not None and len(config.amax) != self.layers:
            raise ServeError(f"the calibration has {len(config.amax)} layers, the model {self.layers}")
        self.eos = self.tokenizer.eos_token_id
        self.prefix = PrefixCache(config.prefix_cache_bytes)
        self.detectors = [(kvstore.OutlierDetector(config.outlier_factor), kvstore.OutlierDetector(config.outlier_factor))
                          for _ in range(self.layers)]
        self.generator = torch.Generator().manual_seed(1234)
        self.requests = 0
        self.in_flight_bytes = 0
        self._lock = threading.Lock()
        self._quality: queue.Queue[tuple[list[int], int, torch.Tensor] | None] = queue.Queue(QUALITY_QUEUE)
        self.quality_dropped = 0
        self.quality_done = 0
        self._worker = threading.Thread(target=self._quality_loop, name="qfleet-quality", daemon=True)
        self._worker.start()
        self._set_bytes_gauge()

    # -- caches --

    def new_cache(self, kv_format: str | None = None) -> StoredCache:
        """An empty cache in this engine's format (or `kv_format`, e.g. bf16 for the quality reference)."""
        fmt = kv_format or self.config.kv_format
        write_log = WriteLog()
        layers = []
        for i in range(self.layers):
            layer_fmt = kvstore.HIGHER_PRECISION if i in self.config.fallback_layers else fmt
            if layer_fmt == "bf16":
                layers.append(StoredLayer(i, "bf16", 0.0, 0.0, write_log, None))
                continue
            k_amax, v_amax = self.config.amax[i]  # type: ignore[index]
            scale = self.config.faults.kv_scale
            layers.append(StoredLayer(i, layer_fmt, k_amax * scale, v_amax * scale, write_log, self.detectors[i],
                                      self.config.faults.quality_noise, self.generator))
        return StoredCache(layers, write_log)

    def _set_bytes_gauge(self) -> None:
        self.sink.set(m.KV_CACHE_BYTES, self.prefix.used_bytes + self.in_flight_bytes)

    # -- generation --

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False).input_ids]

    @torch.inference_mode()
    def generate(self, prompt: str, max_tokens: int, started: float | None = None) -> Generation:
        """Greedy generation of at most `max_tokens` tokens after `prompt`; reports every metric but the request
        outcome, latency and counters that `request` adds."""
        t0 = time.monotonic() if started is None else started
        if self.config.faults.latency_seconds:
            time.sleep(self.config.faults.latency_seconds)
        ids = self.tokenize(prompt)
        if not ids:
            raise ServeError("the prompt is empty")
        if len(ids) >= self.config.max_seq_len:
            raise ServeError(f"the prompt has {len(ids)} tokens; the engine was built for at most "
                             f"{self.config.max_seq_len} tokens in all")
        max_tokens = max(1, min(int(max_tokens), self.config.max_seq_len - len(ids)))
        B = self.config.block_tokens
        keys = block_keys(ids, B, limit=reusable_blocks(len(ids), B))
        with self._lock:
            found = self.prefix.lookup(keys)
        cache = self.new_cache()
        if found.hits:
            cache.load_blocks(found.payloads)
        reused = found.hits * B
        logits_steps: list[torch.Tensor] = []
        out = self.model(input_ids=torch.tensor([ids[reused:]]), past_key_values=cache, use_cache=True)
        written, fallback = len(ids) - reused, len(cache.write_log.take())
        for b in range(found.hits, len(keys)):
            payload, nbytes = cache.block(b * B, (b + 1) * B)
            with self._lock:
                self.prefix.insert(keys[b], payload, nbytes)
        logits = out.logits[0, -1].float()
        generated: list[int] = []
        ttft = 0.0
        last = time.monotonic()
        for step in range(max_tokens):
            logits_steps.append(torch.log_softmax(logits, dim=-1))
            token = int(logits.argmax())
            now = time.monotonic()
            if step == 0:
                ttft = now - t0
            else:
                self.sink.observe(m.TIME_PER_OUTPUT_TOKEN, now - last)
            last = now
            generated.append(token)
            if token == self.eos or step == max_tokens - 1:
                break
            out = self.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            written += 1
            fallback += len(cache.write_log.take())
            logits = out.logits[0, -1].float()
            self.in_flight_bytes = cache.nbytes
        self.sink.observe(m.TIME_TO_FIRST_TOKEN, ttft)
        kv_bytes, kv_tokens = cache.nbytes, cache.get_seq_length()
        self.in_flight_bytes = 0
        self.sink.add(m.KV_TOKENS, written)
        self.sink.add(m.KV_FALLBACK_TOKENS, fallback)
        self.sink.add(m.PREFIX_CACHE_HITS, found.hits)
        self.sink.add(m.PREFIX_CACHE_MISSES, found.misses)
        self.sink.set(m.KV_BYTES_PER_TOKEN, kv_bytes / max(1, kv_tokens))
        self._set_bytes_gauge()
        self.requests += 1
        sampled = self._sample()
        if sampled:
            self._enqueue_quality(ids + generated, len(ids), torch.stack(logits_steps))
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(text, len(ids), len(generated), found.hits, found.misses, fallback, kv_bytes, kv_tokens,
                          ttft, time.monotonic() - t0, sampled)

    def warm_up(self) -> None:
        """One short generation before the server says ready, counted nowhere: the first call pays torch's lazy
        set-up (about a second on CPU), which would otherwise land in the first real request's latency and, on a
        canary with few requests, in its p99."""
        sink, prefix, requests = self.sink, self.prefix, self.requests
        self.sink, self.prefix = RecordingSink(), PrefixCache(self.config.prefix_cache_bytes)
        try:
            self.generate("Warm up the model.", 2)
        finally:
            self.sink, self.prefix, self.requests = sink, prefix, requests

    def request(self, prompt: str, max_tokens: int, started: float | None = None) -> Generation:
        """`generate` plus the request-level metrics (outcome, duration, token counts); re-raises failures."""
        t0 = time.monotonic() if started is None else started
        try:
            result = self.generate(prompt, max_tokens, t0)
        except Exception:
            self.sink.add(m.REQUESTS, 1, outcome="error")
            self.sink.observe(m.REQUEST_DURATION, time.monotonic() - t0)
            raise
        self.sink.add(m.REQUESTS, 1, outcome="success")
        self.sink.observe(m.REQUEST_DURATION, time.monotonic() - t0)
        self.sink.add(m.TOKENS, result.prompt_tokens, kind="prompt")
        self.sink.add(m.TOKENS, result.generated_tokens, kind="generated")
        return result

    # -- live quality --

    def _sample(self) -> bool:
        """Deterministic sampling: request i is sampled when floor(i * share) steps up (share 0.25: every 4th)."""
        share = self.config.quality_share
        if share <= 0:
            return False
        return math.floor(self.requests * share) > math.floor((self.requests - 1) * share)

    def _enqueue_quality(self, ids: list[int], prompt_tokens: int, logprobs: torch.Tensor) -> None:
        try:
            self._quality.put_nowait((ids, prompt_tokens, logprobs))
        except queue.Full:
            self.quality_dropped += 1

    def quality_divergence(self, ids: list[int], prompt_tokens: int, logprobs: torch.Tensor) -> tuple[float, float]:
        """(mean KL(bf16 || served) in nats, top-1 agreement) over the generated positions, the reference being the
        same tokens recomputed with BF16 KV."""
        steps = logprobs.shape[0]
        with torch.inference_mode():
            cache = self.new_cache("bf16")
            out = self.model(input_ids=torch.tensor([ids[: prompt_tokens + steps - 1]]), past_key_values=cache,
                             use_cache=True)
            reference = torch.log_softmax(out.logits[0, prompt_tokens - 1: prompt_tokens - 1 + steps].float(), dim=-1)
        kl = (reference.exp() * (reference - logprobs)).sum(dim=-1).clamp(min=0.0)
        agree = (reference.argmax(-1) == logprobs.argmax(-1)).float()
        return float(kl.mean()), float(agree.mean())

    def _quality_loop(self) -> None:
        while True:
            item = self._quality.get()
            if item is None:
                return
            try:
                kl, top1 = self.quality_divergence(*item)
                self.sink.observe(m.QUALITY_KL, kl)
                self.sink.observe(m.QUALITY_TOP1, top1)
                self.quality_done += 1
            except Exception:  # noqa: BLE001 - a failed sample must not stop the worker
                log.exception("quality sample failed")
            finally:
                self._quality.task_done()

    def wait_quality(self, timeout: float) -> bool:
        """Waits (bounded) until every queued quality sample is done; True when it is."""
        deadline = time.monotonic() + timeout
        while self._quality.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        try:
            self._quality.put(None, timeout=5)
        except queue.Full:
            return
        self._worker.join(timeout=30)
