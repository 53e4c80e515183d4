"""Runs one container inside its pod's network namespace and a private mount namespace, like a containerd shim.

    ip netns exec NS unshare --mount --propagation private python -m localfleet.executor.shim SPEC.json

Binds the pod's volumes at their mount paths, starts the command, forwards SIGTERM/SIGINT to it and, when it
exits, writes its exit code to SPEC["exitFile"] (atomically). It runs in a session of its own, so it and the
container outlive a restart of the executor, which reads the exit file instead of waiting on a child.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _bind(source: str, target: str, read_only: bool) -> None:
    target_path = Path(target)
    if Path(source).is_dir():
        target_path.mkdir(parents=True, exist_ok=True)
    else:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    for source, target, read_only in spec["mounts"]:
        _bind(source, target, read_only)
    with open(spec["log"], "ab") as log:
        try:
            child = subprocess.Popen(spec["command"], env=spec["env"], cwd=spec.get("workingDir") or "/",
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            log.write(f"cannot start {spec['command'][0]}: {error}\n".encode())
            _write_exit(spec, 128, f"StartError: {error}")
            return 128
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        code = child.wait()
    _write_exit(spec, 128 - code if code < 0 else code, "")
    return 0


def _write_exit(spec: dict, code: int, reason: str) -> None:
    exit_file = Path(spec["exitFile"])
    tmp = exit_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"exitCode": code, "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "reason": reason}))
    os.replace(tmp, exit_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
