"""python -m localfleet build|up|down|status [--run-dir DIR]"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from localfleet import binaries
from localfleet.fleet import Fleet

DEFAULT_RUN_DIR = Path(os.environ.get("QFLEET_FLEET_DIR", Path.cwd() / ".localfleet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="where the fleet keeps its state, data and logs (default: ./.localfleet)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text", help="status format")
    args = parser.parse_args(argv)

    if args.command == "build":
        binaries.build_missing()
        return 0
    fleet = Fleet(args.run_dir)
    if args.command == "up":
        binaries.build_missing()
        fleet.up()
        _print_usage(fleet)
        return 0
    if args.command == "down":
        fleet.down()
        return 0
    status = fleet.status()
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return 0 if status.get("running") else 1


def _print_usage(fleet: Fleet) -> None:
    kubectl = binaries.path_of("kubectl")
    print(f"""
The local fleet is up. Use it with kubectl:
  export KUBECONFIG={fleet.kubeconfig}
  {kubectl} get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.compute.major
Prometheus: {fleet.prometheus_url()}
Gateway (HTTPRoutes attach to Gateway localfleet/fleet, listener web): {fleet.gateway_url()}
Stop it with: python -m localfleet down""")


def _print_status(status: dict) -> None:
    if "processes" not in status:
        print(f"localfleet: not running ({status['runDir']})")
        return
    print(f"localfleet: {'running' if status['running'] else 'DEGRADED'} ({status['runDir']})")
    for name, proc in status["processes"].items():
        print(f"  {name:<24} pid {proc['pid']:<8} {'up' if proc['alive'] else 'DOWN'}")
    for key in ("apiserver", "prometheus", "gateway", "kubeconfig", "logs"):
        print(f"  {key:<24} {status[key]}")


if __name__ == "__main__":
    sys.exit(main())
