"""The pure parts of `make bench`: attribution of audit events, the synthetic serving series that both controllers'
gates read, the Argo Rollouts template's bounds against qfleet's defaults, the operator's histograms read between two
scrapes, and the ratio table."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from benchmarks.fleet import audit, measure, procstat, report, synthetic, workload
from qfleet.api import metrics as m
from qfleet.api.rollout_spec import Analysis
from qfleet.gates import effective_gates

USER = "system:serviceaccount:qfleet-system:qfleet"


def event(verb: str, stage: str, resource: str = "jobs", user: str = USER, subresource: str | None = None,
          at: str = "2026-11-30T12:00:00.000000Z") -> str:
    ref = {"resource": resource, **({"subresource": subresource} if subresource else {})}
    return json.dumps({"user": {"username": user}, "verb": verb, "stage": stage, "objectRef": ref,
                       "requestReceivedTimestamp": at})


NOON = 1796040000.0  # 2026-11-30T12:00:00Z


@pytest.mark.parametrize("lines, expected", [
    ([event("create", "ResponseComplete")], {("create", "jobs"): 1}),
    # a watch is counted once, when it starts; its end is not a second request
    ([event("watch", "ResponseStarted"), event("watch", "ResponseComplete")], {("watch", "jobs"): 1}),
    ([event("update", "ResponseComplete", "quantizedmodels", subresource="status")],
     {("update", "quantizedmodels/status"): 1}),
    ([event("get", "ResponseComplete", user="system:kube-controller-manager")], {}),
    ([event("list", "Panic")], {}),
    ([event("get", "ResponseComplete", at="2026-11-30T12:01:00Z")], {}),  # after the window
])
def test_audit_events_are_attributed_to_the_controllers_user_within_the_window(lines, expected):
    assert dict(audit.requests(lines, USER, NOON - 1, NOON + 30)) == expected


def test_audit_totals_split_reads_and_writes():
    counts = audit.requests([event("get", "ResponseComplete"), event("watch", "ResponseStarted"),
                             event("patch", "ResponseComplete")], USER, NOON - 1, NOON + 1)
    assert audit.totals(counts) == {"requests": 3, "reads": 2, "writes": 1, "gets": 1, "lease_requests": 0}


def test_lease_renewals_are_counted_apart_from_the_work():
    counts = audit.requests([event("update", "ResponseComplete", "leases"), event("get", "ResponseComplete", "leases"),
                             event("patch", "ResponseComplete")], USER, NOON - 1, NOON + 1)
    assert audit.totals(counts) == {"requests": 1, "reads": 0, "writes": 1, "gets": 0, "lease_requests": 2}


def test_the_audit_log_is_read_with_the_files_the_apiserver_rotated_it_into(tmp_path):
    # The apiserver rotates its audit log at 100 MB even at --audit-log-maxsize=0 (the log library's default): an
    # Argo Rollouts phase 2 of 83,582 requests was once counted as 3,625 from the current file alone.
    (tmp_path / "audit-2026-11-30T12-00-10.000.log").write_text(event("create", "ResponseComplete") + "\n")
    (tmp_path / "audit.log").write_text(event("patch", "ResponseComplete") + "\n")
    (tmp_path / "auditor.log").write_text(event("delete", "ResponseComplete") + "\n")  # not the audit log's
    counts = audit.read(tmp_path / "audit.log", USER, NOON - 1, NOON + 1)
    assert dict(counts) == {("create", "jobs"): 1, ("patch", "jobs"): 1}


def test_a_missing_audit_log_counts_nothing(tmp_path):
    assert audit.read(tmp_path / "audit.log", USER, NOON - 1, NOON + 1) == {}


def test_the_audit_policy_records_only_the_controllers_without_bodies():
    policy = audit.policy([USER])
    assert policy["rules"] == [{"level": "Metadata", "users": [USER]}, {"level": "None"}]
    assert policy["omitStages"] == ["RequestReceived"]


def samples(lines: list[str]) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_synthetic_series_grow_at_the_profile_rates_with_the_labels_the_gates_select():
    ten = samples(synthetic.series("ns", "llama", "abc", 10.0))
    requests = next(v for k, v in ten.items() if k.startswith(m.REQUESTS))
    assert requests == synthetic.REQUESTS_PER_SECOND * 10
    selector = f'namespace="ns",{m.POD_LABELS["model"]}="llama",{m.POD_LABELS["revision"]}="abc"'
    assert all(selector in key for key in ten)
    fallback = next(v for k, v in ten.items() if k.startswith(m.KV_FALLBACK_TOKENS))
    tokens = next(v for k, v in ten.items() if k.startswith(m.KV_TOKENS + "{"))
    assert fallback / tokens == pytest.approx(synthetic.FALLBACK_SHARE)
    buckets = [v for k, v in ten.items() if k.startswith(m.REQUEST_DURATION + "_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == requests  # cumulative, +Inf is the count


def test_the_argo_rollouts_template_holds_qfleets_default_bounds():
    defaults = {g.name: g.max for g in effective_gates(Analysis())}
    template = workload.analysis_template(workload.Workload(models=1, namespaces=1), "http://prom:9090")
    bounds = {metric["name"]: Decimal(metric["successCondition"].split("<=")[1])
              for metric in template["spec"]["metrics"]}
    assert bounds == {"p99-latency-ratio": defaults["p99LatencyRatio"], "fallback-rate": defaults["fallbackRate"],
                      "quality-drop": defaults["qualityDrop"]}


def test_both_workloads_have_the_same_steps_replicas_and_gpus():
    work = workload.Workload(models=3, namespaces=2)
    qm = workload.quantized_model("m0000", work, "http://prom:9090")
    ro = workload.rollout("m0000", "bench-00", work)
    assert [s["weight"] for s in qm["spec"]["rollout"]["steps"]] == ["10", "50", "100"]
    assert [s["setWeight"] for s in ro["spec"]["strategy"]["canary"]["steps"] if "setWeight" in s] == [10, 50]
    assert qm["spec"]["serving"]["replicas"] == ro["spec"]["replicas"] == 1
    assert qm["spec"]["nodePool"]["gpusPerReplica"] == 1
    assert ro["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert work.placement() == [("bench-00", "m0000"), ("bench-01", "m0001"), ("bench-00", "m0002")]


@pytest.mark.parametrize("ours, theirs, expected", [(10, 20, "0.50x"), (0, 0, "-"), (3, 0, "inf"), (None, 1, "-")])
def test_ratio(ours, theirs, expected):
    assert report.ratio(ours, theirs) == expected


def _lag(cause: str, counts: dict[float, float]) -> dict:
    name = "qfleet_operator_wakeup_lag_seconds_bucket"
    return {(name, tuple(sorted({"cause": cause, "le": str(le)}.items()))): n for le, n in counts.items()}


def test_a_histograms_quantile_between_two_scrapes_is_read_per_label_or_over_all():
    inf = float("inf")
    before = {**_lag("scheduled", {1.0: 10, 2.0: 10, 60.0: 10, inf: 10}),
              **_lag("event", {1.0: 0, 2.0: 0, 60.0: 0, inf: 0})}
    # between the scrapes: 100 scheduled wake-ups within 1 s; 100 events, 50 of them beyond 2 s
    after = {**_lag("scheduled", {1.0: 110, 2.0: 110, 60.0: 110, inf: 110}),
             **_lag("event", {1.0: 10, 2.0: 50, 60.0: 100, inf: 100})}
    name = "qfleet_operator_wakeup_lag_seconds"
    assert measure.quantile(before, after, name, 0.99, cause="scheduled") == 1.0
    assert measure.quantile(before, after, name, 0.99, cause="event") == 60.0
    assert measure.quantile(before, after, name, 0.5) == 1.0  # 110 of 200 within 1 s
    assert measure.quantile(before, after, name, 0.99, cause="retry") is None


def test_a_phase_reports_the_machines_busy_share_of_all_its_cores(monkeypatch):
    monkeypatch.setattr(procstat, "cores", lambda: 2)
    phase = measure.Phase("1 apply -> serving (floor)", 100.0, audit.Counter(), 0.0, 0.0, machine_cpu_s=190.0)
    row = phase.row()
    assert row["machine_cpu_s"] == 190.0 and row["machine_busy_share"] == 0.95
    assert "| machine CPU, all processes (core-s) | 190.0 | - | - |" in report.phase_table("1", row, None)


def test_the_machines_busy_time_leaves_out_idle_io_wait_and_steal():
    assert procstat.busy_ticks("cpu  100 5 50 1000 20 3 2 7 0 0") == 160
    assert procstat.machine_busy_seconds() > 0


def test_the_machines_cpu_is_told_by_process_with_this_benchmark_and_the_controller_named():
    import os
    clock = measure.MachineClock({os.getppid(): "the controller under test"})
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # CPU this process spends, for the clock to see
        sum(range(10_000))
    spent = clock.by_process()
    assert spent["benchmark (this process)"] > 0
    assert os.getpid() in procstat.cpu_by_process()
    assert all(seconds > 0 for seconds in spent.values())


def test_the_process_table_sums_small_processes_into_others_and_totals_each_column():
    table = report.processes_table({"qfleet: 1": {"kube-apiserver": 200.0, "etcd": 40.0, "sh": 0.2},
                                    "floor: 1": {"kube-apiserver": 120.0, "sh": 0.4}})
    assert table[2] == "| process | qfleet: 1 | floor: 1 |"
    assert table[4] == "| kube-apiserver | 200.0 | 120.0 |" and table[5] == "| etcd | 40.0 | 0.0 |"
    assert table[6] == "| others | 0.2 | 0.4 |" and table[7] == "| all | 240.2 | 120.4 |"
    assert report.processes_table({}) == []


def test_a_phase_lists_its_requests_by_verb_and_resource():
    phase = measure.Phase("2", 1.0, audit.Counter({("patch", "httproutes"): 2, ("create", "jobs"): 1}), 0.0, 0.0)
    assert phase.by_verb() == {"create jobs": 1, "patch httproutes": 2}
