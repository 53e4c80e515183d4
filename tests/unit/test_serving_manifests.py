"""Serving children: the per-revision Deployment, the role Services, and the HTTPRoute weight edit."""
from __future__ import annotations

import copy

import pytest

from qfleet.api import parse_spec
from qfleet.manifests.jobs import Owner
from qfleet.manifests.serving import role_service, serving_deployment, weighted_rules

SPEC = parse_spec({
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
    "quantization": {"kvCache": "nvfp4"},
    "nodePool": {"nodeSelector": {"nvidia.com/gpu.family": "blackwell"}, "gpusPerReplica": 8,
                 "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "serving": {"image": "qfleet/runtime:1", "replicas": 4, "resources": {"limits": {"memory": "256Gi"}}},
    "runtime": {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
})
OWNER = Owner("llama", "inference", "uid-1")


def test_a_revision_deployment_serves_its_engine_on_the_pinned_nodes() -> None:
    deployment = serving_deployment(OWNER, SPEC, "7c1f000000", "nvfp4", (10, 0), replicas=1, role="canary")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert deployment["metadata"]["name"] == "llama-7c1f000000"
    assert deployment["metadata"]["labels"]["qfleet.io/role"] == "canary"
    assert "qfleet.io/role" not in pod["metadata"]["labels"]  # Services select by revision: promotion restarts nothing
    assert deployment["spec"]["selector"]["matchLabels"] == {"qfleet.io/model": "llama",
                                                             "qfleet.io/revision": "7c1f000000"}
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.compute.major"] == "10"
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"]["limits"] == {"memory": "256Gi", "nvidia.com/gpu": "8"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001,
                                                                          "metrics": 8002}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["args"][:5] == ["serve", "--revision", "7c1f000000", "--kv-format", "nvfp4"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    share = container["args"].index("--quality-sample-share")
    assert container["args"][share + 1] == "0.1"  # the default: one request in ten also runs through BF16


def test_the_quality_sample_share_reaches_the_server() -> None:
    spec = parse_spec({**SPEC.model_dump(mode="json", by_alias=True, exclude_none=True),
                       "serving": {"image": "qfleet/runtime:1", "qualitySampleShare": "1"}})
    args = serving_deployment(OWNER, spec, "7c1f000000", "nvfp4", (10, 0), replicas=1, role="canary")[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--quality-sample-share") + 1] == "1"


def test_role_services_select_a_revision() -> None:
    service = role_service(OWNER, "stable", "52aa000000")
    assert service["metadata"]["name"] == "llama-stable"
    assert service["spec"]["selector"] == {"qfleet.io/model": "llama", "qfleet.io/revision": "52aa000000"}


ROUTE = {"spec": {"parentRefs": [{"name": "gw"}], "rules": [
    {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
     "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}],
     "backendRefs": [{"name": "llama-stable", "port": 8000}]},
    {"backendRefs": [{"name": "other-model", "port": 8000, "weight": 1}]},
]}}


@pytest.mark.parametrize("stable_weight, canary_weight", [(99, 1), (999, 1), (0, 100)])
def test_only_the_backend_weights_change(stable_weight: int, canary_weight: int) -> None:
    before = copy.deepcopy(ROUTE)
    rules = weighted_rules(ROUTE, "llama-stable", "llama-canary", stable_weight, canary_weight)
    assert ROUTE == before  # the input is not modified
    assert rules[0]["backendRefs"] == [{"name": "llama-stable", "port": 8000, "weight": stable_weight},
                                       {"name": "llama-canary", "port": 8000, "weight": canary_weight}]
    assert rules[0]["matches"] == ROUTE["spec"]["rules"][0]["matches"]
    assert rules[0]["filters"] == ROUTE["spec"]["rules"][0]["filters"]
    assert rules[1] == ROUTE["spec"]["rules"][1]


def test_an_existing_canary_ref_is_updated_not_duplicated() -> None:
    once = {"spec": {"rules": weighted_rules(ROUTE, "llama-stable", "llama-canary", 90, 10)}}
    twice = weighted_rules(once, "llama-stable", "llama-canary", 50, 50)
    assert [r["weight"] for r in twice[0]["backendRefs"]] == [50, 50]
    assert len(twice[0]["backendRefs"]) == 2


def _with_refresh(refresh: dict | None, artifacts: str = "pvc://qfleet-artifacts/llama"):
    raw = SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["artifacts"] = {"uri": artifacts}
    if refresh is not None:
        raw["quantization"]["calibration"]["refresh"] = refresh
    return parse_spec(raw)


SAMPLE_CASES = [
    # reason, refresh, artifacts, serve flags (None: none), writable mount subPath (None: none)
    ("no refresh", None, "pvc://qfleet-artifacts/llama", None, None),
    ("refresh without the opt-in", {"schedule": "168h"}, "pvc://qfleet-artifacts/llama", None, None),
    ("opted in on a claim", {"schedule": "168h", "sampleTraffic": {"enabled": True, "maxPrompts": 64,
                                                                   "retention": "48h"}},
     "pvc://qfleet-artifacts/llama", ["/var/lib/qfleet/traffic-sample", "64", "172800"], "llama/llama/traffic-sample"),
    ("opted in, claim root", {"schedule": "168h", "sampleTraffic": {"enabled": True}}, "pvc://qfleet-artifacts",
     ["/var/lib/qfleet/traffic-sample", "256", "604800"], "llama/traffic-sample"),
    ("opted in on an object store", {"schedule": "168h", "sampleTraffic": {"enabled": True}}, "s3://bucket/a",
     ["s3://bucket/a/llama/traffic-sample", "256", "604800"], None),
]


@pytest.mark.parametrize("reason, refresh, artifacts, flags, sub_path", SAMPLE_CASES,
                         ids=[case[0] for case in SAMPLE_CASES])
def test_the_traffic_sample_is_opt_in_and_the_only_writable_path(reason, refresh, artifacts, flags,
                                                                 sub_path) -> None:
    deployment = serving_deployment(OWNER, _with_refresh(refresh, artifacts), "7c1f000000", "fp8", (9, 0),
                                    replicas=1, role="stable")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}

    if flags is None:
        assert not any(arg.startswith("--prompt-sample") for arg in args)
    else:
        given = [args[args.index(flag) + 1] for flag in
                 ("--prompt-sample-dir", "--prompt-sample-max", "--prompt-sample-retention")]
        assert given == flags
    if sub_path is None:
        assert "traffic-sample" not in mounts
    else:
        assert mounts["traffic-sample"] == {"name": "traffic-sample", "mountPath": "/var/lib/qfleet/traffic-sample",
                                            "subPath": sub_path}
    assert all(m.get("readOnly") for name, m in mounts.items() if name == "artifacts")
