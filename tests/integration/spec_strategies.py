"""Hypothesis strategies for whole QuantizedModel documents, valid and invalid, for the spec fuzzing.

A document is a valid base with up to four mutations; each mutation sets one field (from `FIELDS`, which covers every
field of the spec) to a value drawn from its kind's pool, which mixes valid values, edge values on both sides of each
range and wrong types, or deletes the field. The pools hold the values a person is likely to type and the boundaries
of every rule; hypothesis combines them and shrinks any disagreement it finds to a small document.
"""
from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

DELETE = object()

JUNK = st.sampled_from([None, True, "", "x", [], {}, -1, 0.5, "1e3", " "])

INTS = st.one_of(st.integers(-3, 10), st.sampled_from([63, 64, 72, 73, 100, 101, 1000, 1001, 4096, 4097, 65536,
                                                        65537, 131072, 131073, 1_048_576, 1_048_577, 10**9,
                                                        10**9 + 1, 2**31, 2**53]),
                 st.sampled_from([1.0, 8.0, 2.5, "8", True]))
DECIMALS = st.one_of(
    st.sampled_from(["0", "0.0", "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "0.9", "0.95", "0.99", "0.999",
                     "1", "1.0", "1.2", "1.5", "2", "10", "100", "1000", "00.5", "1.", ".5", "-0.1", "1e-3", "abc",
                     "0.10000000000000000001", ""]),
    st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,4})?\Z"),
    st.sampled_from([0.5, 1, 0, 2]))
WEIGHTS = st.one_of(st.sampled_from([1, 2, 5, 10, 20, 25, 33, 50, 99, 100, 0, -1, 101, 150]),
                    st.sampled_from(["0.5", "1", "10", "100", "100.0", "0", "0.0", "101", "-1", "1.5", "ten",
                                     "99.99", 0.5, 50.0, 100.0]))
DURATIONS = st.one_of(st.sampled_from(["5m", "1s", "0s", "500ms", "999ms", "1000ms", "1h30m", "72h", "48h", "1.5h",
                                       "0.5s", "5", "5d", "", "-1s", "10us", "1ns", "1m0s", "24h", "2h", 5, "1S"]),
                      st.from_regex(r"\A([0-9]{1,3}(ms|s|m|h)){1,2}\Z"))
MODEL_URIS = st.sampled_from(["hf://meta-llama/Llama-3.3-70B-Instruct", "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
                              "s3://bucket/model", "gs://b/m", "pvc://claim/models/x", "http://x/y", "hf://",
                              "hf://a b", "meta-llama/Llama", "", "HF://x/y", "hf://" + "a" * 300])
ARTIFACT_URIS = st.sampled_from(["pvc://qfleet-artifacts/llama", "s3://bucket/a", "gs://b/a", "hf://x/y",
                                 "pvc://", "pvc:/x", "", "file:///tmp/x", "pvc://a/" + "b" * 2100])
HTTP_URLS = st.sampled_from(["http://prometheus-operated.monitoring.svc:9090", "https://p:9090/x", "http://",
                             "ftp://p", "prometheus:9090", ""])
NAMES = st.one_of(st.sampled_from(["hf-token", "llama-route", "a", "a.b", "a-", "-a", "A", "a_b", "", "a..b",
                                   "x" * 63, "x" * 64, "x" * 253, "x" * 254]),
                  st.from_regex(r"\A[a-z0-9][-a-z0-9.]{0,20}\Z"))
LABELS = st.one_of(st.sampled_from(["ttft-p95", "a", "a.b", "A", "", "x" * 63, "x" * 64, "-a"]),
                   st.from_regex(r"\A[a-z][-a-z0-9]{0,10}\Z"))
TEXT = st.one_of(st.sampled_from(["main", "", "x" * 253, "x" * 254, "v1.0", "ünïcode"]), st.text(max_size=12))
IMAGES = st.sampled_from(["ghcr.io/qfleet/qfleet-runtime:0.1.0", "", "x" * 512, "x" * 513, "a"])
KV = ["bf16", "fp8", "int8", "nvfp4", "auto", "fp4", "FP8", "", "mxfp4", "fp16"]
WEIGHT_FORMATS = ["bf16", "fp8", "nvfp4", "int4-awq", "int4", "fp16", ""]
PARAMETER_COUNTS = st.sampled_from(["70.6e9", "135M", "7B", "1T", "1.5K", "70", 70, "seventy", "1e", "", "1.5e9",
                                    "70.6E9", "-1", 7e9])
QUANTITIES = st.sampled_from(["1", "8", "100m", "1Gi", "1.5", "2e3", "+1", "-1", ".5", "1Ki", "Gi", "1GB", 8, 0.5,
                              "", "1e", "8 "])
SECRET_KEYS = st.sampled_from(["token", "HF_TOKEN", "a.b-c_d", "", "a b", "a/b", "x" * 254])
ENV_NAMES = st.sampled_from(["HF_HUB_OFFLINE", "_X", "a1", "1A", "A-B", "", "A B", "X" * 254])


def _gate(custom: bool = False) -> st.SearchStrategy:
    fields: dict[str, st.SearchStrategy] = {"max": DECIMALS}
    optional: dict[str, st.SearchStrategy] = {"abortAbove": DECIMALS}
    if custom:
        fields.update(name=LABELS, query=st.sampled_from(["up", "", "rate(x[{{interval}}])", "q" * 4097]))
    else:
        optional["minSamples"] = INTS
    return st.fixed_dictionaries(fields, optional=optional)


STEPS = st.lists(st.fixed_dictionaries({"weight": WEIGHTS}, optional={
    "pause": DURATIONS,
    "analysis": st.fixed_dictionaries({}, optional={"interval": DURATIONS, "gates": st.fixed_dictionaries(
        {}, optional={"fallbackRate": _gate(), "custom": st.lists(_gate(custom=True), max_size=2)})}),
}), min_size=0, max_size=4) | st.sampled_from([[{"weight": 1}, {"weight": 100}], [{"weight": 100}],
                                               [{"weight": 10}, {"weight": 10}, {"weight": 100}],
                                               [{"weight": 50}, {"weight": 10}, {"weight": 100}]])
TOLERATIONS = st.lists(st.fixed_dictionaries({}, optional={
    "key": st.sampled_from(["nvidia.com/gpu", "", "k" * 318]), "operator": st.sampled_from(["Exists", "Equal", "In"]),
    "value": st.sampled_from(["present", "", "v" * 64]), "effect": st.sampled_from(["NoSchedule", "NoExecute", "Bad"]),
    "tolerationSeconds": INTS}), max_size=3)
RESOURCES = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), QUANTITIES, max_size=3)
SELECTOR = st.dictionaries(st.sampled_from(["nvidia.com/gpu.family", "nvidia.com/gpu.product", "pool"]),
                           st.sampled_from(["blackwell", "hopper", "", "v" * 63, "v" * 64, "NVIDIA-H100"]), max_size=3)
ENV = st.lists(st.fixed_dictionaries({"name": ENV_NAMES}, optional={"value": st.sampled_from(["1", "", "v" * 4097])}),
               max_size=3)
SCHEDULES = st.sampled_from(["168h", "1h", "59m", "1.5h", "0 3 * * 0", "*/15 * * * *", "0 0 31 2 *", "22-2 * * * 7",
                             "61 * * * *", "0 3 * * 8", "0 3 * * sun", "* * * *", "0  3 * * 0", "*/0 * * * *", "",
                             "1d", 168])
TRIGGER = st.fixed_dictionaries({"max": DECIMALS}, optional={"for": DURATIONS})
REFRESH = st.fixed_dictionaries({}, optional={
    "schedule": SCHEDULES,
    "triggers": st.fixed_dictionaries({}, optional={"fallbackRate": TRIGGER, "qualityDrop": TRIGGER,
                                                    "outOfRange": TRIGGER}),
    "sampleTraffic": st.fixed_dictionaries({}, optional={"enabled": st.sampled_from([True, False, "true"]),
                                                         "maxPrompts": INTS, "retention": DURATIONS}),
    "recentShare": DECIMALS,
})
ROUTING = st.sampled_from([{"replicas": {}}, {"gatewayAPI": {"httpRoute": "llama-route"}}, {},
                           {"replicas": {}, "gatewayAPI": {"httpRoute": "r"}}, {"gatewayAPI": {"httpRoute": "Bad_"}},
                           {"gatewayAPI": {}}])

FIELDS: dict[str, st.SearchStrategy] = {
    "model.uri": MODEL_URIS,
    "model.revision": TEXT,
    "model.tokenSecretRef": st.fixed_dictionaries({"name": NAMES}, optional={"key": SECRET_KEYS}),
    "model.shape": st.fixed_dictionaries({"numLayers": INTS, "numKeyValueHeads": INTS, "headDim": INTS,
                                          "parameterCount": PARAMETER_COUNTS}),
    "model.shape.numLayers": INTS,
    "model.shape.parameterCount": PARAMETER_COUNTS,
    "quantization.weights": st.sampled_from(WEIGHT_FORMATS),
    "quantization.kvCache": st.sampled_from(KV),
    "quantization.kvCacheLadder": st.lists(st.sampled_from(KV), max_size=6),
    "quantization.calibration.dataset": TEXT,
    "quantization.calibration.samples": INTS,
    "quantization.calibration.maxSeqLen": INTS,
    "quantization.calibration.refresh": REFRESH,
    "quantization.calibration.refresh.schedule": SCHEDULES,
    "quantization.layerFallback": st.fixed_dictionaries({"maxLayerKL": DECIMALS}),
    "engine.backend": st.sampled_from(["tensorrt-llm", "qfleet-python", "vllm", ""]),
    "engine.maxBatchSize": INTS,
    "engine.maxSeqLen": INTS,
    "engine.maxNumTokens": INTS,
    "engine.tensorParallel": INTS,
    "engine.kvCacheFreeGpuMemoryFraction": DECIMALS,
    "nodePool.nodeSelector": SELECTOR,
    "nodePool.tolerations": TOLERATIONS,
    "nodePool.gpusPerReplica": INTS,
    "serving.image": IMAGES,
    "serving.replicas": INTS,
    "serving.resources": st.fixed_dictionaries({}, optional={"limits": RESOURCES, "requests": RESOURCES}),
    "serving.qualitySampleShare": DECIMALS,
    "runtime.image": IMAGES,
    "runtime.env": ENV,
    "rollout.trafficRouting": ROUTING,
    "rollout.steps": STEPS,
    "rollout.analysis.interval": DURATIONS,
    "rollout.analysis.prometheus.address": HTTP_URLS,
    "rollout.analysis.minRequests": INTS,
    "rollout.analysis.gates.p99LatencyRatio": _gate(),
    "rollout.analysis.gates.fallbackRate": _gate(),
    "rollout.analysis.gates.qualityDrop": _gate(),
    "rollout.analysis.gates.kvCacheHitRateDrop": _gate(),
    "rollout.analysis.gates.custom": st.lists(_gate(custom=True), max_size=3),
    "rollout.analysis.warmup": DURATIONS,
    "rollout.analysis.confidence": DECIMALS,
    "rollout.analysis.failureLimit": INTS,
    "rollout.analysis.inconclusivePolicy": st.sampled_from(["hold", "rollback", "Hold", ""]),
    "rollout.analysis.inconclusiveLimit": INTS,
    "rollout.analysis.maxHold": DURATIONS,
    "rollout.autoRollback": st.sampled_from([True, False, "true", 1]),
    "rollout.canaryReplicas": INTS,
    "rollout.paused": st.sampled_from([True, False, "yes"]),
    "artifacts.uri": ARTIFACT_URIS,
}
REQUIRED = ("model", "model.uri", "quantization", "quantization.kvCache", "artifacts", "artifacts.uri")

BASE = {
    "apiVersion": "qfleet.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "fuzz"},
    "spec": {
        "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
        "quantization": {"kvCache": "fp8"},
        "nodePool": {"gpusPerReplica": 8},
        "rollout": {"trafficRouting": {"replicas": {}}, "steps": [{"weight": 10, "pause": "1m"}, {"weight": 100}]},
        "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
    },
}


def _set(spec: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


@st.composite
def documents(draw) -> dict:
    """A whole QuantizedModel: the base with 0 to 4 fields set or deleted (about one in eight left valid)."""
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 15)) == 0:
            _set(document["spec"], draw(st.sampled_from(REQUIRED)), DELETE)
            continue
        path = draw(st.sampled_from(sorted(FIELDS)))
        value = draw(st.one_of(FIELDS[path], JUNK) if draw(st.integers(0, 9)) == 0 else FIELDS[path])
        _set(document["spec"], path, value)
    return document
