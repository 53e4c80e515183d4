"""python -m localfleet.executor --run-dir DIR --kubeconfig FILE [--fleet-file FILE]: the fleet's process executor.

SIGTERM stops the executor but leaves its pods running (like restarting a kubelet); `localfleet down` removes them.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from localfleet import kube, nodes
from localfleet.executor.kubelet import Executor
from localfleet.executor.podspec import image_table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m localfleet.executor")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--fleet-file", type=Path, default=nodes.DEFAULT_FLEET_FILE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    executor_config = nodes.load_executor(args.fleet_file)
    Executor(kube.client(args.kubeconfig), args.run_dir.resolve(), executor_config.node_manifests(),
             image_table(executor_config.images)).run()


if __name__ == "__main__":
    main()
