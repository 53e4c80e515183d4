"""The fleet-scale race (`make bench`), qfleet then Argo Rollouts, each on a fresh local
fleet of NODES simulated GPU nodes, the same N models, steps, pauses, interval and Prometheus; prints both legs and
the ratios and writes benchmarks/results/<date>-N<N>.md and .json. See docs/performance.md."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from benchmarks.fleet import audit, floor, legs, report
from benchmarks.fleet import workload as wl
from benchmarks.fleet.synthetic import SyntheticServing
from localfleet import binaries, kube
from localfleet.fleet import Fleet
from localfleet.operator_process import free_port

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
LEGS = {"qfleet": legs.run_qfleet, "argo": legs.run_argo, "floor": floor.run_floor}


def fleet_file(path: Path, nodes: int) -> Path:
    path.write_text(yaml.safe_dump({"pools": [{"name": "b200", "gpu": "B200", "nodes": nodes, "gpusPerNode": 8,
                                               "cpu": "224", "memory": "2Ti"}]}))
    return path


def run_leg(leg: str, models: int, nodes: int, namespaces: int = 10, interval: int = 10, timeout: float = 1800,
            log=print, inspect=None) -> tuple[list[dict], dict, dict]:
    """One leg on a fresh fleet; returns its phases (rows), the requests by verb per phase, and its extras.
    `inspect(fleet)`, when given, runs after the phases and before the fleet stops."""
    work = wl.Workload(models=models, namespaces=namespaces, interval_s=interval)
    work_dir = Path(tempfile.mkdtemp(prefix=f"qfleet-bench-{leg}-"))
    users = [audit.service_account_user(legs.QFLEET_NAMESPACE, legs.QFLEET_ACCOUNT),
             audit.service_account_user(legs.ARGO_NAMESPACE, legs.ARGO_ACCOUNT)]
    exporter = SyntheticServing(free_port())
    fleet = Fleet(work_dir / "fleet", fleet_file=fleet_file(work_dir / "fleet.yaml", nodes), name="qfleet-bench",
                  audit_policy=audit.write_policy(work_dir / "audit-policy.yaml", users),
                  extra_scrape_configs=[exporter.scrape_config()])
    log(f"{leg}: N={models} NODES={nodes}: starting a fresh fleet in {work_dir}")
    started = time.monotonic()
    fleet.up(log=lambda *_: None)
    log(f"{leg}: fleet up in {time.monotonic() - started:.0f} s")
    exporter.start(kube.client(fleet.kubeconfig))
    try:
        phases, extras = LEGS[leg](fleet, work, fleet.prometheus_url(), work_dir, timeout, log)
        if inspect is not None:
            inspect(fleet)
    finally:
        exporter.stop()
        fleet.down(log=lambda *_: None)
    extras["work_dir"] = str(work_dir)
    return [{"name": p.name, **p.row()} for p in phases], {p.name: p.by_verb() for p in phases}, extras


def machine() -> str:
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores, {memory_kib / 1024 / 1024:.0f} GiB, {platform.platform()}"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head.strip() + (" (with uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--models", type=int, default=int(os.environ.get("N", 1000)), help="N (env N), default 1000")
    parser.add_argument("--nodes", type=int, default=int(os.environ.get("NODES", 1000)),
                        help="simulated B200 nodes, 8 GPUs each (env NODES), default 1000")
    parser.add_argument("--interval", type=int, default=int(os.environ.get("INTERVAL", 10)),
                        help="analysis interval in seconds (env INTERVAL), default 10")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--legs", default=os.environ.get("LEGS", "qfleet,argo"), help="qfleet,argo[,floor] (env LEGS); floor: the fleet's own time for phase 1's Jobs and Deployments")
    parser.add_argument("--growth-models", default=os.environ.get("GROWTH_MODELS", ""),
                        help="also run the qfleet leg at these N (same NODES), e.g. 100,300 (env GROWTH_MODELS)")
    parser.add_argument("--growth-nodes", default=os.environ.get("GROWTH_NODES", ""),
                        help="also run the qfleet leg at these NODES (same N), e.g. 100 (env GROWTH_NODES)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("PHASE_TIMEOUT", 1800)),
                        help="seconds a phase may take before the run fails (env PHASE_TIMEOUT)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    chosen = [leg for leg in args.legs.split(",") if leg]
    settings = {"namespaces": args.namespaces, "interval": args.interval, "timeout": args.timeout}
    binaries.build_missing(log=print, components=binaries.COMPONENTS
                           + (binaries.BENCH_COMPONENTS if "argo" in chosen else ()))
    header = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
              "machine": machine(), "models": args.models, "nodes": args.nodes,
              "analysis interval": f"{args.interval}s", "namespaces": args.namespaces,
              "steps": " / ".join(f"{w}%" + (f" {p}s" if p else "") for w, p in wl.Workload(1, 1).steps),
              "versions": ", ".join(f"{c.name} {c.version}" for c in (*binaries.COMPONENTS, *binaries.BENCH_COMPONENTS)
                                    if c.name in ("kubernetes", "kwok", "prometheus", "argo-rollouts")),
              "gates": "both read synthetic serving series (KWOK pods export none): benchmarks/fleet/synthetic.py"}
    results: dict[str, list[dict]] = {}
    verbs: dict[str, dict[str, dict]] = {}
    extras: dict[str, dict] = {}
    growth: dict[str, list[dict]] = {"qfleet growth with N (NODES fixed)": [],
                                     "qfleet growth with NODES (N fixed)": []}
    stem = args.out / f"{datetime.now(timezone.utc):%Y-%m-%d}-N{args.models}"

    def write() -> str:
        """Everything measured so far: a leg that fails later leaves the earlier ones on disk."""
        for leg, extra in extras.items():
            header[f"{leg} settings"] = ", ".join(f"{k}={v}" for k, v in extra.get("settings", {}).items())
            if "rollbacks" in extra:
                header[f"{leg} healthy canaries rolled back"] = (
                    f"{extra['rollbacks']} of {args.models}" + (f" ({', '.join(extra['rolled_back'])})"
                                                                if extra["rollbacks"] else ""))
        if "floor" in results:
            header["fleet floor, phase 1 (s)"] = results["floor"][0]["wall_s"]
            header["fleet floor, phase 1 machine CPU (core-s; share of all cores)"] = (
                f"{results['floor'][0]['machine_cpu_s']}; {results['floor'][0]['machine_busy_share']}")
        for rows in growth.values():
            rows.sort(key=lambda r: (r["models"], r["nodes"]))
        processes = {f"{leg}: {row['name']}": row["cpu_by_process"] for leg, rows in results.items() for row in rows
                     if row.get("cpu_by_process")}
        text = report.document(header, {k: v for k, v in results.items() if k != "floor"}, verbs,
                               {k: v for k, v in growth.items() if len(v) > 1}, processes)
        args.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text + "\n")
        stem.with_suffix(".json").write_text(json.dumps({"header": header, "legs": results, "verbs": verbs,
                                                          "growth": growth, "extras": extras}, indent=2) + "\n")
        return text

    for leg in chosen:
        rows, by_verb, extra = run_leg(leg, args.models, args.nodes, **settings)
        results[leg], extras[leg] = rows, extra
        for phase, counts in by_verb.items():
            verbs.setdefault(phase, {})[leg] = counts
        if leg == "qfleet":
            for rows_of in growth.values():
                rows_of.append(report.growth_row(args.models, args.nodes, rows))
        write()
    for models in [int(n) for n in args.growth_models.split(",") if n]:
        rows, _, _ = run_leg("qfleet", models, args.nodes, **settings)
        growth["qfleet growth with N (NODES fixed)"].append(report.growth_row(models, args.nodes, rows))
        write()
    for nodes in [int(n) for n in args.growth_nodes.split(",") if n]:
        rows, _, _ = run_leg("qfleet", args.models, nodes, **settings)
        growth["qfleet growth with NODES (N fixed)"].append(report.growth_row(args.models, nodes, rows))
        write()
    print(write())
    print(f"\nwritten: {stem}.md, {stem}.json", file=sys.stderr)
    return 0
