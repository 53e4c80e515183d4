"""python -m localfleet.demo [run|down] [--short] [--run-dir DIR] [--report-dir DIR] [--namespace NS]

`run` (what `make demo` does) starts the local fleet if it is not running, installs qfleet, plays the stories with a
live rollout table, writes the report and leaves everything running so you can look around; `down` (what
`make demo-down` does) stops the operator, removes what the demo created and stops the fleet if the demo started it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from localfleet import binaries, kube
from localfleet.__main__ import DEFAULT_RUN_DIR
from localfleet.demo import report
from localfleet.demo.install import Installation
from localfleet.demo.stories import Demo, timestamp
from localfleet.fleet import Fleet


def measured_by_revision(prometheus: str, namespace: str) -> dict[str, dict]:
    """What Prometheus kept of each revision's servers: KV bytes per token as stored, and requests served."""
    from prometheus_api_client import PrometheusConnect

    from qfleet.api import metrics as m

    revision = m.POD_LABELS["revision"]
    where = f'namespace="{namespace}"'
    connection = PrometheusConnect(url=prometheus, disable_ssl=True)
    out: dict[str, dict] = {}
    for series in connection.custom_query(
            f"max by ({revision}, kv_format) (max_over_time({m.KV_BYTES_PER_TOKEN}{{{where}}}[2h]))"):
        out.setdefault(series["metric"][revision], {}).update(
            kvCache=series["metric"].get("kv_format"), bytesPerToken=float(series["value"][1]))
    for series in connection.custom_query(
            f"sum by ({revision}) (max_over_time({m.REQUESTS}{{{where}}}[2h]))"):
        out.setdefault(series["metric"][revision], {})["requests"] = float(series["value"][1])
    return out


def run(args: argparse.Namespace) -> int:
    began, started_at = time.monotonic(), timestamp()
    binaries.build_missing()
    fleet = Fleet(args.run_dir)
    installation = Installation(fleet, args.namespace)
    installation.up()
    demo = Demo(fleet, kube.client(fleet.kubeconfig), args.namespace, short=args.short)
    passed = False
    try:
        passed = demo.run()
    finally:
        try:
            measured = measured_by_revision(fleet.prometheus_url(), args.namespace)
        except Exception as error:  # the report is still written; say why a part is missing
            print(f"could not read the servers' measurements from Prometheus: {error}")
            measured = {}
        machine = {**report.machine_facts(), "started": started_at, "seconds": f"{time.monotonic() - began:.0f}"}
        report.write_samples(args.report_dir, demo.recorder.samples)
        written = report.write(args.report_dir, demo.results, demo.recorder.samples, measured, machine, passed,
                               args.short)
        print(f"\nReport: {written} (plots beside it). Operator log: {installation.operator_log}")
    kubectl = binaries.path_of("kubectl")
    print(f"""
{'Every story passed' if passed else 'A story FAILED (see above)'} in {time.monotonic() - began:.0f} s. Everything is still running:
  export KUBECONFIG={fleet.kubeconfig}
  {kubectl} get qm -n {args.namespace}
  {Path(sys.executable).parent / "kubectl-qfleet"} status smollm -n {args.namespace}
Prometheus {fleet.prometheus_url()}, gateway {fleet.gateway_url()} (Host: {demo.host})
Stop everything with: make demo-down""")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "down"], nargs="?", default="run")
    parser.add_argument("--short", action="store_true",
                        help="leave out the NVFP4 canary (what `make test` runs so the demo cannot rot)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="the local fleet's run directory")
    parser.add_argument("--report-dir", type=Path, default=Path.cwd() / "demo-report")
    parser.add_argument("--namespace", default="qfleet-demo")
    parser.add_argument("--keep-fleet", action="store_true", help="down: leave the fleet running")
    args = parser.parse_args(argv)
    if args.command == "down":
        Installation(Fleet(args.run_dir), args.namespace).down(stop_fleet=not args.keep_fleet)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
