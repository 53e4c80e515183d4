"""What the demo applies: the QuantizedModels (SmolLM2-135M on the executor nodes, Llama 3.3 70B with `kvCache: auto`
on the simulated H100 pool), their rollout steps, gates and per-layer fallback, the route, the regression's fault
switch, the request every story sends, and how long each story may wait."""
from __future__ import annotations

from localfleet import nodes
from localfleet.demo.traffic import PASSAGES, infer_body
from qfleet.api import GROUP, VERSION

MODEL = "smollm"
AUTO_MODEL = "llama-70b-auto"
ROUTE = "smollm"
GATEWAY_API = ("gateway.networking.k8s.io", "v1")
FAULT = {"name": "QFLEET_FAULT_KV_SCALE", "value": "0.5"}
PROMPT = PASSAGES[0]
INFER = infer_body(PROMPT)
PIPELINE_TIMEOUT = 1200
ROLLOUT_TIMEOUT = 900
NVFP4_CANARY_SECONDS = 1800
"""How long the NVFP4 canary may gather evidence: near the quality bound the default gate needs about 2,000 scored
tokens a step (each step judges only what it gathered); with 600 s a run on 2 cores passed 20% and ran out at 50%.
Past this budget the demo reports an undecided canary rather than waiting for it."""

STEPS = [
    # Each step is judged on what it accumulated since it started; it advances once its evidence passes.
    {"weight": "20", "pause": "60s"},
    {"weight": "50", "pause": "30s"},
    {"weight": "100"},
]
CPU_SETTING = "p99LatencyRatio"
GATES = {
    # The one setting that differs from the defaults, for a CPU reason: two CPU servers share two cores with the
    # traffic and the live-quality rescoring, and NVFP4's packing is about 1.3x slower on CPU than FP8's (a GPU
    # kernel does not pay it); 40 requests a side make the p99's interval, not 500, so a step takes minutes.
    CPU_SETTING: {"max": "2", "abortAbove": "4", "minSamples": 40},
    # fallbackRate and qualityDrop: the defaults, not written here (docs/api.md).
}
LAYER_FALLBACK = {"maxLayerKL": "0.0033"}
"""NVFP4's per-layer fallback: layers whose calibration KL is above it keep BF16 KV. With this demo's calibration
(4 builtin samples of <= 128 tokens) it keeps 8 of SmolLM2's 30 layers in BF16, the smallest measured plan whose
quality drop sat well under 0.01 (0.0042 on 4,088 held-out tokens; 4 layers gave 0.0095, 1 layer 0.0139), at 10,896
KV bytes per token against FP8's 11,520: docs/runtime.md, "NVFP4 and per-layer fallback"."""


def smollm(prometheus: str, kv_cache: str = "fp8") -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": {"name": MODEL},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "quantization": {"weights": "bf16", "kvCache": kv_cache,
                             "calibration": {"dataset": "builtin", "samples": 4, "maxSeqLen": 128}},
            "nodePool": {"nodeSelector": {nodes.EXECUTOR_LABEL: "true"}, "tolerations": [nodes.EXECUTOR_TOLERATION],
                         "gpusPerReplica": 1},
            # Every request is also scored against BF16: one in ten would leave the quality gate without the
            # samples it needs within a demo's minutes.
            "serving": {"image": "qfleet/runtime:dev", "replicas": 1, "qualitySampleShare": "1"},
            "rollout": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": ROUTE}},
                "steps": STEPS,
                # A fresh server's first requests pay lazy set-up: on 40 requests, one of them is the p99.
                "analysis": {"interval": "30s", "prometheus": {"address": prometheus}, "minRequests": 20,
                             "warmup": "20s", "failureLimit": 1, "gates": GATES},
            },
            "artifacts": {"uri": f"pvc://qfleet-artifacts/{MODEL}"},
        },
    }


def llama_auto() -> dict:
    """examples/llama-70b-auto.yaml's choice of format, on the local fleet's simulated H100 pool."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": {"name": AUTO_MODEL},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
            "quantization": {"weights": "bf16", "kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]},
            "nodePool": {"nodeSelector": {nodes.POOL_LABEL: "h100"}, "gpusPerReplica": 8},
            "artifacts": {"uri": f"pvc://qfleet-artifacts/{AUTO_MODEL}"},
        },
    }
