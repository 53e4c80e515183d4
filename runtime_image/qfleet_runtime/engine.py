"""The qfleet serving engine (CPU path): greedy generation with the KV cache stored in the chosen format.

It runs inside Triton's Python backend (`triton_model`), but knows nothing of Triton: it reports to a
`serving_metrics.Sink`, so tests drive it directly too.

- **Storage.** `StoredCache` is a transformers `Cache` whose layers keep K and V packed (`kvstore`: bf16, fp8, int8,
  nvfp4 with its block scales) and hand attention the dequantized values; `nbytes` is what is really held.
- **Fallbacks** (`stored_cache`). Per layer, token and KV head: a K or V entry above the calibrated amax (what the
  scale can hold without clipping), or flagged by the layer's outlier detector, is kept in bf16 beside the packed
  codes. Layers in the calibration report's `fallbackLayers` are stored in bf16 altogether. The fallback rate is
  `qfleet_kv_fallback_entries_total` over `qfleet_kv_entries_total` (entries of quantized layers); a token counts
  once in `qfleet_kv_fallback_tokens_total` when any of its quantized-layer entries fell back. The values above the
  calibrated amax go to `qfleet_kv_out_of_range_values_total` over `qfleet_kv_values_total` (re-calibration's drift
  signal).
- **Prefix cache.** Prompt K/V in blocks of `block_tokens`, keyed by the whole prefix, LRU within a byte budget
  (`prefix_cache`); blocks are kept packed, so the same budget holds about 3.5x more NVFP4 blocks than BF16.
- **Live quality** (`quality`). A share of requests is rescored in a background thread: the prompt's next tokens
  predicted with the served plan and with BF16 KV, the same definition as evaluate's `qualityDrop`; the counts go to
  `qfleet_quality_*_tokens_total`, the mean KL and top-1 agreement to the quality histograms.
- **Prompt sample** (opt-in, `sample_writer`): with `prompt_sample_dir` set, every served prompt's token ids go to a
  bounded ring written to `<dir>/<hostname>.jsonl` from a background thread, for re-calibration on recent traffic.
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

import torch

from qfleet.api import metrics as m

from . import kvstore, model_recipe, prompt_sample, quality
from .prefix_cache import PrefixCache, block_keys, reusable_blocks
from .sample_writer import PromptSampler
from .serving_metrics import RecordingSink, Sink
from .stored_cache import StoredCache, StoredLayer, WriteLog, build_cache

__all__ = ["StoredCache", "StoredLayer", "WriteLog"]

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
    prompt_sample_dir: Path | None = None
    """Where this pod keeps its sample of served prompts (None: no sample, the default)."""
    prompt_sample_max: int = prompt_sample.DEFAULT_MAX_ENTRIES
    prompt_sample_retention: float = prompt_sample.DEFAULT_RETENTION_SECONDS


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
    kv_entries: int = 0
    fallback_entries: int = 0
    kv_values: int = 0
    out_of_range_values: int = 0


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
        self.score_generator = torch.Generator().manual_seed(4321)
        self.requests = 0
        self.in_flight_bytes = 0
        self._lock = threading.Lock()
        self._quality: queue.Queue[list[int] | None] = queue.Queue(QUALITY_QUEUE)
        self.quality_dropped = 0
        self.quality_done = 0
        self._worker = threading.Thread(target=self._quality_loop, name="qfleet-quality", daemon=True)
        self._worker.start()
        self.sample: PromptSampler | None = None
        if config.prompt_sample_dir is not None:
            self.sample = PromptSampler(config.prompt_sample_dir, config.prompt_sample_max,
                                        config.prompt_sample_retention,
                                        prompt_sample.tokenizer_fingerprint(self.tokenizer), config.max_seq_len)
        self._set_bytes_gauge()

    # -- caches --

    def new_cache(self, kv_format: str | None = None, rescoring: bool = False) -> StoredCache:
        """An empty cache of the served plan (or all `kv_format`, e.g. bf16 for the quality reference). A cache for
        rescoring a request has no outlier detectors (their state belongs to the traffic) and its own noise
        generator (the fault switch), so the quality thread never touches the serving thread's state."""
        c = self.config
        return build_cache(self.layers, kv_format or c.kv_format, c.amax, c.fallback_layers, c.faults.kv_scale,
                           None if rescoring else self.detectors, c.faults.quality_noise,
                           self.score_generator if rescoring else self.generator)

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
        if self.sample is not None:
            self.sample.offer(ids)
        B = self.config.block_tokens
        keys = block_keys(ids, B, limit=reusable_blocks(len(ids), B))
        with self._lock:
            found = self.prefix.lookup(keys)
        cache = self.new_cache()
        if found.hits:
            cache.load_blocks(found.payloads)
        reused = found.hits * B
        out = self.model(input_ids=torch.tensor([ids[reused:]]), past_key_values=cache, use_cache=True)
        written, fallback = len(ids) - reused, len(cache.write_log.take())
        entries, fallback_entries = cache.write_log.take_entries()
        values, out_of_range = cache.write_log.take_values()
        for b in range(found.hits, len(keys)):
            payload, nbytes = cache.block(b * B, (b + 1) * B)
            with self._lock:
                self.prefix.insert(keys[b], payload, nbytes)
        logits = out.logits[0, -1].float()
        generated: list[int] = []
        ttft = 0.0
        last = time.monotonic()
        for step in range(max_tokens):
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
            more, more_fallback = cache.write_log.take_entries()
            entries, fallback_entries = entries + more, fallback_entries + more_fallback
            more, more_out = cache.write_log.take_values()
            values, out_of_range = values + more, out_of_range + more_out
            logits = out.logits[0, -1].float()
            self.in_flight_bytes = cache.nbytes
            self._set_bytes_gauge()
        self.sink.observe(m.TIME_TO_FIRST_TOKEN, ttft)
        kv_bytes, kv_tokens = cache.nbytes, cache.get_seq_length()
        self.in_flight_bytes = 0
        self.sink.add(m.KV_TOKENS, written)
        self.sink.add(m.KV_FALLBACK_TOKENS, fallback)
        self.sink.add(m.KV_ENTRIES, entries)
        self.sink.add(m.KV_FALLBACK_ENTRIES, fallback_entries)
        self.sink.add(m.KV_VALUES, values)
        self.sink.add(m.KV_OUT_OF_RANGE_VALUES, out_of_range)
        self.sink.add(m.PREFIX_CACHE_HITS, found.hits)
        self.sink.add(m.PREFIX_CACHE_MISSES, found.misses)
        self.sink.set(m.KV_BYTES_PER_TOKEN, kv_bytes / max(1, kv_tokens))
        self._set_bytes_gauge()
        self.requests += 1
        sampled = self._sample()
        if sampled:
            self._enqueue_quality(ids)
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(text, len(ids), len(generated), found.hits, found.misses, fallback, kv_bytes, kv_tokens,
                          ttft, time.monotonic() - t0, sampled,
                          kv_entries=entries, fallback_entries=fallback_entries, kv_values=values,
                          out_of_range_values=out_of_range)

    def warm_up(self) -> None:
        """One short generation before the server says ready, counted nowhere: the first call pays torch's lazy
        set-up (about a second on CPU), which would otherwise land in the first real request's latency and, on a
        canary with few requests, in its p99."""
        sink, prefix, requests, sample = self.sink, self.prefix, self.requests, self.sample
        self.sink, self.prefix, self.sample = RecordingSink(), PrefixCache(self.config.prefix_cache_bytes), None
        try:
            self.generate("Warm up the model.", 2)
        finally:
            self.sink, self.prefix, self.requests, self.sample = sink, prefix, requests, sample

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

    def _enqueue_quality(self, ids: list[int]) -> None:
        try:
            self._quality.put_nowait(ids)
        except queue.Full:
            self.quality_dropped += 1

    def rescore(self, ids: list[int]) -> quality.Score:
        """The prompt `ids` predicted with the served plan and with BF16 KV (`quality`: evaluate's definition)."""
        return quality.score_text(self.model, ids, self.new_cache(rescoring=True), self.new_cache("bf16", True))

    def _quality_loop(self) -> None:
        while True:
            item = self._quality.get()
            if item is None:
                return
            try:
                score = self.rescore(item)
                if score.scored:
                    self.sink.add(m.QUALITY_SCORED_TOKENS, score.scored)
                    self.sink.add(m.QUALITY_LOST_TOKENS, score.lost)
                    self.sink.add(m.QUALITY_GAINED_TOKENS, score.gained)
                    self.sink.observe(m.QUALITY_KL, score.kl_sum / score.scored)
                    self.sink.observe(m.QUALITY_TOP1, score.agree / score.scored)
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
        if self.sample is not None:
            self.sample.close()
        try:
            self._quality.put(None, timeout=5)
        except queue.Full:
            return
        self._worker.join(timeout=30)
