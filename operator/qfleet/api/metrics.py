"""The serving metrics contract (runtime -> Prometheus -> gates): names, labels, and what each means.

The runtime's serving backend exports these on Triton's metrics port (8002) beside Triton's own `nv_inference_*`;
the operator's default gate queries use only these names and the pod labels below, which the Prometheus scrape
config turns into `qfleet_io_model`, `qfleet_io_revision`, `qfleet_io_role` (dots and slashes become underscores).
docs/metrics.md is the human-readable copy; a unit test keeps the two in step.
"""

REQUESTS = "qfleet_requests_total"
"""Counter: finished requests, label `outcome` (success, error)."""
REQUEST_DURATION = "qfleet_request_duration_seconds"
"""Histogram: request latency in seconds, from arrival to the last token (the p99 gate's input)."""
TIME_TO_FIRST_TOKEN = "qfleet_time_to_first_token_seconds"
"""Histogram: seconds from arrival to the first generated token."""
TIME_PER_OUTPUT_TOKEN = "qfleet_time_per_output_token_seconds"
"""Histogram: seconds per generated token after the first."""
TOKENS = "qfleet_tokens_total"
"""Counter: tokens, label `kind` (prompt, generated)."""
KV_ENTRIES = "qfleet_kv_entries_total"
"""Counter: K/V entries written to quantized layers (the fallback rate's denominator). An entry is one token's K or V
vector of one KV head in one layer whose planned format is not bf16: head_dim values stored at one precision."""
KV_FALLBACK_ENTRIES = "qfleet_kv_fallback_entries_total"
"""Counter: of those, entries kept at higher precision (bf16) because they exceeded the calibrated scale or tripped
the outlier detector. Their ratio, the fallback rate, is the share of quantized KV values held at higher precision."""
KV_VALUES = "qfleet_kv_values_total"
"""Counter: K/V values written to quantized layers (entries times head_dim): the out-of-range share's denominator."""
KV_OUT_OF_RANGE_VALUES = "qfleet_kv_out_of_range_values_total"
"""Counter: of those, values whose |x| is above the calibrated amax (the scale cannot hold them without clipping): the
share of live KV the calibration did not cover, read by the re-calibration drift trigger `outOfRange`."""
KV_TOKENS = "qfleet_kv_tokens_total"
"""Counter: tokens whose K/V were written to the cache (the per-token series' denominator)."""
KV_FALLBACK_TOKENS = "qfleet_kv_fallback_tokens_total"
"""Counter: of those, tokens with at least one fallback entry in some quantized layer (each token once): the
per-token series, informational (no gate reads it); the fallback layers are always bf16 and not counted here."""
KV_CACHE_BYTES = "qfleet_kv_cache_bytes"
"""Gauge: bytes of KV cache in use."""
KV_BYTES_PER_TOKEN = "qfleet_kv_bytes_per_token"
"""Gauge: measured KV bytes per token over all layers, as stored (scales included)."""
PREFIX_CACHE_HITS = "qfleet_prefix_cache_hits_total"
"""Counter: prompt KV blocks served from the prefix cache."""
PREFIX_CACHE_MISSES = "qfleet_prefix_cache_misses_total"
"""Counter: prompt KV blocks that had to be computed."""
QUALITY_SCORED_TOKENS = "qfleet_quality_scored_tokens_total"
"""Counter: prompt positions of sampled requests scored twice, with the served KV plan and with BF16 KV."""
QUALITY_LOST_TOKENS = "qfleet_quality_lost_tokens_total"
"""Counter: of those, positions whose next token BF16 KV predicts and the served plan does not."""
QUALITY_GAINED_TOKENS = "qfleet_quality_gained_tokens_total"
"""Counter: of those, positions whose next token the served plan predicts and BF16 KV does not. The live quality
drop is (lost - gained) / scored: BF16's next-token accuracy minus the served plan's, evaluate's definition."""
QUALITY_KL = "qfleet_quality_kl_divergence_nats"
"""Histogram: mean next-token KL divergence (nats) of a sampled request's prompt, BF16 KV against the served plan."""
QUALITY_TOP1 = "qfleet_quality_top1_agreement_ratio"
"""Histogram: share of a sampled request's prompt positions whose argmax agrees with BF16 KV (0..1)."""

ALL = (REQUESTS, REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, TOKENS, KV_ENTRIES, KV_FALLBACK_ENTRIES,
       KV_VALUES, KV_OUT_OF_RANGE_VALUES, KV_TOKENS, KV_FALLBACK_TOKENS, KV_CACHE_BYTES, KV_BYTES_PER_TOKEN,
       PREFIX_CACHE_HITS, PREFIX_CACHE_MISSES,
       QUALITY_SCORED_TOKENS, QUALITY_LOST_TOKENS, QUALITY_GAINED_TOKENS, QUALITY_KL, QUALITY_TOP1)
METRIC_LABELS = ("model", "kv_format")
"""Labels every qfleet metric carries, set by the runtime."""
POD_LABELS = {"model": "qfleet_io_model", "revision": "qfleet_io_revision", "role": "qfleet_io_role"}
"""Target labels Prometheus derives from the serving pods' labels qfleet.io/model, /revision, /role."""

GATEWAY_REQUEST_DURATION = "traefik_service_request_duration_seconds"
"""Histogram exported by the gateway (Traefik v3, `--metrics.prometheus.addServicesLabels`, on by default), not by the
runtime: per Traefik service, from the moment Traefik hands a request to one of the service's servers (after routing)
to the end of the proxied response, labels `service`, `code`, `method`, `protocol`. The p99 gate's input with the
latency source `gateway` (docs/metrics.md); its buckets are Traefik's `--metrics.prometheus.buckets`."""
GATEWAY_SERVICE_LABEL = "service"
"""The label naming the Traefik service: for an HTTPRoute backendRef to a Kubernetes Service, Traefik's Kubernetes
Gateway provider names it `<namespace>-<name>-http-<port>@kubernetesgateway` (qfleet.promql.traefik_service)."""
GATEWAY_PROVIDER = "kubernetesgateway"
"""The provider suffix Traefik gives the services of its Kubernetes Gateway provider (`...@kubernetesgateway`)."""
