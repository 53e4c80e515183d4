"""The same work for both controllers, as plain documents: N models (QuantizedModels for qfleet, Rollouts with an
AnalysisTemplate for Argo Rollouts) spread over a few namespaces, 1 GPU and 1 serving replica each, replica-ratio
traffic, the same canary steps and pauses, and analysis at the same interval against the same Prometheus.

Both analyses read the synthetic serving series (`benchmarks.fleet.synthetic`): KWOK pods export none, so the
benchmark serves the qfleet runtime's metrics for every serving pod it sees, the same healthy profile for every
revision. qfleet judges them with its built-in gates (p99 latency ratio, fallback rate, quality drop, with their
default bounds); the Argo Rollouts template asks the same three questions with one PromQL query each.
"""
from __future__ import annotations

from dataclasses import dataclass

from qfleet.api import GROUP, VERSION
from qfleet.api import metrics as m

SERVING_IMAGES = ("bench/server:v1", "bench/server:v2")
REVISION_LABEL = "qfleet.io/revision"
ARGO_HASH_LABEL = "rollouts-pod-template-hash"
MODEL_LABEL = "qfleet.io/model"


@dataclass(frozen=True)
class Workload:
    models: int
    namespaces: int
    interval_s: int = 10
    steps: tuple[tuple[int, int], ...] = ((10, 30), (50, 30), (100, 0))
    """(weight percent, pause seconds); the last step is 100 and has no pause."""

    def placement(self) -> list[tuple[str, str]]:
        """(namespace, name) of every model, round-robin over the namespaces."""
        return [(namespace_name(i % self.namespaces), f"m{i:04d}") for i in range(self.models)]

    def namespace_names(self) -> list[str]:
        return [namespace_name(i) for i in range(min(self.namespaces, self.models))]


def namespace_name(index: int) -> str:
    return f"bench-{index:02d}"


def quantized_model(name: str, workload: Workload, prometheus: str, image: str = SERVING_IMAGES[0]) -> dict:
    steps = [{"weight": str(w), **({"pause": f"{p}s"} if p else {})} for w, p in workload.steps]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "quantization": {"weights": "bf16", "kvCache": "fp8"},
            "nodePool": {"nodeSelector": {"nvidia.com/gpu.family": "blackwell"}, "gpusPerReplica": 1},
            "serving": {"image": image, "replicas": 1},
            "rollout": {"trafficRouting": {"replicas": {}}, "steps": steps,
                        "analysis": {"interval": f"{workload.interval_s}s", "prometheus": {"address": prometheus}}},
            "artifacts": {"uri": f"pvc://qfleet-artifacts/{name}"},
        },
    }


ANALYSIS_TEMPLATE = "serving-gates"


def _selector(hash_arg: str) -> str:
    return f'namespace="{{{{args.namespace}}}}",{m.POD_LABELS["model"]}="{{{{args.model}}}}",' \
           f'{m.POD_LABELS["revision"]}="{{{{args.{hash_arg}}}}}"'


def _increase(metric: str, hash_arg: str, interval_s: int) -> str:
    return f"sum(increase({metric}{{{_selector(hash_arg)}}}[{interval_s}s]))"


ARGO_WINDOW_S = 60
"""Argo Rollouts judges each measurement on its own query window: a minute of samples, where qfleet's window is the
step so far. An empty answer (a new pod's first samples not in yet) is a measurement error for Argo Rollouts, where
qfleet holds for evidence: consecutiveErrorLimit 10 gives Argo Rollouts the same patience."""


def analysis_template(workload: Workload, prometheus: str) -> dict:
    """The three gates qfleet applies by default, at qfleet's default bounds and with its definitions
    (fallback: share of quantized KV entries held at higher precision; quality drop: (lost - gained) / scored
    positions against BF16 KV), as Argo Rollouts Prometheus metrics."""
    window = ARGO_WINDOW_S

    def p99(hash_arg: str) -> str:
        return (f"histogram_quantile(0.99, sum by (le) (increase({m.REQUEST_DURATION}_bucket{{{_selector(hash_arg)}}}"
                f"[{window}s])))")

    def share(part: str, whole: str) -> str:
        return f"{_increase(part, 'canary-hash', window)} / {_increase(whole, 'canary-hash', window)}"

    lost_minus_gained = (f"({_increase(m.QUALITY_LOST_TOKENS, 'canary-hash', window)} - "
                         f"{_increase(m.QUALITY_GAINED_TOKENS, 'canary-hash', window)})")
    metrics = [
        ("p99-latency-ratio", f"{p99('canary-hash')} / {p99('stable-hash')}", "result[0] <= 1.2"),
        ("fallback-rate", share(m.KV_FALLBACK_ENTRIES, m.KV_ENTRIES), "result[0] <= 0.005"),
        ("quality-drop", f"{lost_minus_gained} / {_increase(m.QUALITY_SCORED_TOKENS, 'canary-hash', window)}",
         "result[0] <= 0.01"),
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": ANALYSIS_TEMPLATE},
        "spec": {
            "args": [{"name": "namespace"}, {"name": "model"}, {"name": "canary-hash"}, {"name": "stable-hash"}],
            "metrics": [{"name": name, "interval": f"{workload.interval_s}s", "failureLimit": 2,
                         "consecutiveErrorLimit": 10, "successCondition": condition,
                         "provider": {"prometheus": {"address": prometheus, "query": query}}}
                        for name, query, condition in metrics],
        },
    }


def rollout(name: str, namespace: str, workload: Workload, image: str = SERVING_IMAGES[0]) -> dict:
    """A Rollout with background analysis from the first step, canary by replica ratio (no traffic router)."""
    steps = []
    for weight, pause in workload.steps[:-1]:
        steps += [{"setWeight": weight}, {"pause": {"duration": f"{pause}s"}}]
    labels = {MODEL_LABEL: name}
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
        "spec": {
            "replicas": 1, "revisionHistoryLimit": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"nodeSelector": {"nvidia.com/gpu.family": "blackwell"},
                         "containers": [{"name": "server", "image": image,
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            },
            "strategy": {"canary": {
                "steps": steps,
                "analysis": {"templates": [{"templateName": ANALYSIS_TEMPLATE}], "startingStep": 0, "args": [
                    {"name": "namespace", "value": namespace}, {"name": "model", "value": name},
                    {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
                    {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}}]},
            }},
        },
    }
