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


def _bind(source: str, target: str, read_only: bool = False) -> None:
    target_path = Path(target)
    if Path(source).is_dir():
        target_path.mkdir(parents=True, exist_ok=True)
    else:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.touch(exist_ok=True)
    subprocess.run(["mount", "--bind", source, target], check=True)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)


STAGE_CANDIDATES = ("/mnt", "/media", "/srv", "/opt")


def _stage_root(targets: list[str]) -> Path:
    """A directory no mount target lies in or above, so the staged sources stay reachable while targets are bound."""
    for candidate in map(Path, STAGE_CANDIDATES):
        if candidate.is_dir() and not any(
                Path(t) == candidate or candidate in Path(t).parents or Path(t) in candidate.parents
                for t in targets):
            return candidate
    raise RuntimeError(f"no directory among {STAGE_CANDIDATES} is free of the pod's mounts {targets}")


def mount_volumes(mounts: list) -> None:
    """Every source is first bound into a private tmpfs stage, then each target (parents first) from there: mounting
    a target such as /tmp must not hide a source that lives under it (a hostPath volume, or the pod's own directory,
    in /tmp). The stage is detached afterwards; the bind mounts made from it stay."""
    stage = _stage_root([target for _, target, _ in mounts])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "qfleet-stage", str(stage)], check=True)
    staged = []
    for index, (source, target, read_only) in enumerate(mounts):
        _bind(source, str(stage / str(index)))
        staged.append((str(stage / str(index)), target, read_only))
    for source, target, read_only in sorted(staged, key=lambda m: len(Path(m[1]).parts)):
        _bind(source, target, read_only)
    subprocess.run(["umount", "--recursive", "--lazy", str(stage)], check=True)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # The log and the exit file live in the pod's directory on the host, which a target such as /tmp may hide once
    # mounted: open both before mounting anything.
    exit_dir = os.open(Path(spec["exitFile"]).parent, os.O_RDONLY | os.O_DIRECTORY)
    with open(spec["log"], "ab") as log:
        try:
            mount_volumes(spec["mounts"])
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            log.write(f"cannot mount the pod's volumes: {error}\n".encode())
            _write_exit(spec, exit_dir, 128, "MountError", str(error))  # reported, not a vanished shim
            return 128
        try:
            child = subprocess.Popen(spec["command"], env=spec["env"], cwd=spec.get("workingDir") or "/",
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            log.write(f"cannot start {spec['command'][0]}: {error}\n".encode())
            _write_exit(spec, exit_dir, 128, "StartError", str(error))
            return 128
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        code = child.wait()
    _write_exit(spec, exit_dir, 128 - code if code < 0 else code, "")
    return 0


def _write_exit(spec: dict, exit_dir: int, code: int, reason: str, message: str = "") -> None:
    name = Path(spec["exitFile"]).name
    record = json.dumps({"exitCode": code, "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "reason": reason, "message": message}).encode()
    fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=exit_dir)
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    os.replace(name + ".tmp", name, src_dir_fd=exit_dir, dst_dir_fd=exit_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
