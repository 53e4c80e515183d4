"""The control loop on the local fleet (KWOK pods): many wake-ups of one model make one write, a person's own rule in
the HTTPRoute survives a canary, and a model is deletable while the operator is down. Requests are counted at the
apiserver (its own /metrics), not in the operator."""
from __future__ import annotations

import re
from collections import Counter

import pytest
from kubernetes import client as k8s

from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.cli import plugin
from test_canary import GATEWAY, canary_model, route  # noqa: F401
from test_pipeline import condition, create, jobs_of, model, objects, read, wait_for_condition  # noqa: F401

pytestmark = pytest.mark.usefixtures("artifacts_claim")
SAMPLE = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$')


def apiserver_requests(api: k8s.ApiClient) -> Counter:
    """apiserver_request_total by (verb, resource, subresource, code), from the apiserver's /metrics."""
    method, url, headers, body, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers, _request_timeout=(5, 30))
    response.read()
    counts: Counter = Counter()
    for line in response.data.decode().splitlines():
        found = SAMPLE.match(line)
        if found:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
            key = (labels.get("verb"), labels.get("resource"), labels.get("subresource", ""), labels.get("code"))
            counts[key] += float(found.group(2))
    return counts


def delta(after: Counter, before: Counter, verb: str, resource: str, subresource: str = "") -> dict[str, float]:
    """Requests between two readings, by response code."""
    codes = {key[3] for key in after if key[:3] == (verb, resource, subresource)}
    return {code: after[(verb, resource, subresource, code)] - before[(verb, resource, subresource, code)]
            for code in codes if after[(verb, resource, subresource, code)] != before[(verb, resource, subresource, code)]}


def serving(objects, namespace: str, operator_process, replicas: int = 1) -> dict:
    document = model()
    document["spec"]["quantization"]["kvCache"] = "fp8"
    document["spec"]["serving"]["replicas"] = replicas
    create(objects, namespace, document)
    return wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process, "RevisionServing")


def test_wakeups_at_once_make_one_write_each(api, objects, batch, namespace, operator_process):
    done = serving(objects, namespace, operator_process)
    stable = done["status"]["revision"]["stable"]
    before = apiserver_requests(api)
    # One spec edit (more replicas) and, at the same moment, events of every child: each wakes the model. The test
    # writes nothing of the model itself after the edit, so a rejected status write could only be a visit racing one.
    apps = k8s.AppsV1Api(api)
    core = k8s.CoreV1Api(api)
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama",
                                           {"spec": {"serving": {"replicas": 2}}})
    for n in range(3):
        touch = {"metadata": {"annotations": {"example.com/touch": str(n)}}}
        for job in jobs_of(batch, namespace, "llama"):
            batch.patch_namespaced_job(job.metadata.name, namespace, touch)
        for service in core.list_namespaced_service(namespace).items:
            core.patch_namespaced_service(service.metadata.name, namespace, touch)
        apps.patch_namespaced_deployment(f"llama-{stable}", namespace, touch)
    wait_until("the stable revision at 2 ready replicas", lambda: (apps.read_namespaced_deployment(
        f"llama-{stable}", namespace).status.ready_replicas or 0) == 2, 60, interval=0.3)
    wait_until("status observes the edit", lambda: read(objects, namespace, "llama")["status"]["observedGeneration"]
               == read(objects, namespace, "llama")["metadata"]["generation"], 30, interval=0.3)
    after = apiserver_requests(api)
    assert delta(after, before, "PATCH", "deployments", "scale") == {"200": 1}
    assert set(delta(after, before, "PUT", "quantizedmodels", "status")) == {"200"}, "a visit raced another"
    assert delta(after, before, "GET", "httproutes") == {}
    assert delta(after, before, "POST", "jobs") == {}


def test_a_persons_own_route_rule_survives_the_canary(api, objects, namespace, fleet, route, operator_process):
    # Simulated pods export no metrics: an analysis an hour away keeps the canary at its first step for a person.
    document = canary_model(fleet.prometheus_url(), analysis={"interval": "1h",
                                                              "prometheus": {"address": fleet.prometheus_url()}})
    create(objects, namespace, document)
    wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process, "RevisionServing", timeout=120)
    stable = read(objects, namespace, "llama")["status"]["revision"]["stable"]
    routes = k8s.CustomObjectsApi(api)
    own_rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [{"name": "admin-console", "port": 8080}]}
    current = routes.get_namespaced_custom_object(*GATEWAY, namespace, "httproutes", "llama-route")
    routes.patch_namespaced_custom_object(*GATEWAY, namespace, "httproutes", "llama-route",
                                          {"spec": {"rules": [*current["spec"]["rules"], own_rule]}})
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama",
                                           {"spec": {"quantization": {"kvCache": "nvfp4"}}})
    wait_until("a canary at a weight", lambda: read(objects, namespace, "llama")["status"].get("canary", {})
               .get("weight") not in (None, "0"), 120, interval=0.3)
    canary = read(objects, namespace, "llama")["status"]["revision"]["canary"]
    assert canary != stable
    rules = routes.get_namespaced_custom_object(*GATEWAY, namespace, "httproutes", "llama-route")["spec"]["rules"]
    assert own(rules) == own_rule and any(ref["name"] == "llama-canary" and ref.get("weight")
                                          for ref in rules[0]["backendRefs"])
    assert plugin.main(["promote", "llama", "-n", namespace, "--kubeconfig", str(fleet.kubeconfig)]) == 0
    wait_until("promoted", lambda: read(objects, namespace, "llama")["status"]["revision"]["stable"] == canary, 60,
               interval=0.3)
    rules = routes.get_namespaced_custom_object(*GATEWAY, namespace, "httproutes", "llama-route")["spec"]["rules"]
    assert own(rules) == own_rule


def own(rules: list[dict]) -> dict:
    """The person's /admin rule as written (the apiserver fills in the backendRef's defaults: drop them)."""
    [rule] = [r for r in rules if r["matches"][0]["path"]["value"] == "/admin"]
    return {"matches": rule["matches"],
            "backendRefs": [{"name": ref["name"], "port": ref["port"]} for ref in rule["backendRefs"]]}


def test_a_model_is_deleted_with_the_operator_stopped_and_nothing_is_left(api, objects, batch, core, namespace,
                                                                           operator_process):
    done = serving(objects, namespace, operator_process)
    assert not done["metadata"].get("finalizers")
    operator_process.stop()
    try:
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama")
        wait_until("the model gone", lambda: not objects.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL)["items"], 30, interval=0.3)
        apps = k8s.AppsV1Api(api)
        wait_until("its children collected", lambda: not jobs_of(batch, namespace, "llama")
                   and not apps.list_namespaced_deployment(namespace).items
                   and not core.list_namespaced_service(namespace).items, 60, interval=0.5)
    finally:
        operator_process.start()
