"""`qfleet-runtime serve`: Triton serving the revision built under `<artifacts>/engine/`, as one child process.

CPU path (verified here): the `tritonserver` binary of the PyPI wheel `nvidia-pytriton` (Triton 2.51) with the qfleet
Python-backend model repository that `build` wrote. Triton needs, and this command assembles in a private working
directory (under $TMPDIR; the artifact volume is mounted read-only in a pod):

- a backend directory `backends/python/` holding the wheel's `libtriton_python.so`, `triton_python_backend_utils.py`
  and the stub for this interpreter's Python version;
- a copy of the model repository with EXECUTION_ENV_PATH set to this interpreter's environment (so the stub imports
  torch from it) and QFLEET_PYTHONPATH to where qfleet_runtime is (the stub ignores PYTHONPATH), plus the serving
  flags below;
- LD_LIBRARY_PATH: this interpreter's own lib directory first (the stub links libpython3.X.so; a different patch
  release of the system's fails with "'_thread.RLock' object has no attribute '_recursion_count'"), then the wheel's
  `nvidia_pytriton.libs`.

Triton listens on --address (default 0.0.0.0, the pod's address) with --grpc-port and --metrics-port; on the CPU
path its HTTP endpoint is on 127.0.0.1 (a free port) behind `front.Front` on --http-port, which stamps each request's
arrival (`qfleet-arrival-ns`, forwarded to the model as a request parameter) so that latency counts Triton's queue;
/v2/health/ready (through the front) turns true once the model is loaded. On SIGTERM (the pod deleted: a revision
scaled down, a promotion) the pod drains for --drain-seconds first: not ready, still serving, so the requests the
gateway routes to it before it sees the endpoint go are answered rather than refused; then Triton gets the SIGTERM and
stops within --exit-timeout-secs (drain and exit timeout together stay within the pod's 30 s grace period). SIGINT is
passed on at once. The working directory is removed and Triton's exit code returned.

GPU path (target tensorrt-llm in the manifest; **not verified here**): `tritonserver` from PATH (the
`nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3` image) with `<engine>/trtllm/model_repository`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import triton_repo
from .front import ARRIVAL_HEADER, Front
from .build import ENGINE_DIR, MANIFEST, TARGET_GPU, source_paths
from .common import StepError

EXIT_TIMEOUT_SECS = 20
PR_SET_PDEATHSIG = 1


def wheel_root() -> Path:
    """The installed `pytriton` package's `tritonserver` directory (binary, backends, stubs)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StepError("the PyPI package nvidia-pytriton is not installed (it carries tritonserver)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise StepError(f"no tritonserver binary under {root}")
    return root


def library_path(root: Path) -> str:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = root.parent.parent / "nvidia_pytriton.libs"
    parts = [p for p in (libdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p]
    return os.pathsep.join(parts)


def backend_directory(root: Path, workdir: Path) -> Path:
    """<workdir>/backends/python/ with the wheel's Python backend and the stub for this Python version."""
    python = workdir / "backends" / "python"
    python.mkdir(parents=True)
    source = root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(source / name, python / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise StepError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return workdir / "backends"


def serving_overrides(args: argparse.Namespace) -> dict[str, str]:
    """config.pbtxt parameters this machine decides: the environment, the code location, the serving flags."""
    values = {"EXECUTION_ENV_PATH": sys.prefix, "QFLEET_PYTHONPATH": source_paths()}
    for key in ("prefix_cache_bytes", "quality_sample_share", "outlier_factor", "block_tokens", "threads"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = str(value)
    return values | prompt_sample_parameters(args)


def prompt_sample_parameters(args: argparse.Namespace) -> dict[str, str]:
    """The opt-in prompt sample's parameters: none without --prompt-sample-dir (the sample is off)."""
    directory = getattr(args, "prompt_sample_dir", None)
    if not directory:
        return {}
    size, retention = args.prompt_sample_max, args.prompt_sample_retention
    if size < 1 or not retention > 0:
        raise StepError(f"--prompt-sample-max must be at least 1 (got {size}) and --prompt-sample-retention above 0 "
                        f"seconds (got {retention})")
    return {"prompt_sample_dir": str(Path(directory).resolve()), "prompt_sample_max": str(size),
            "prompt_sample_retention": f"{retention:g}"}


def check_sample_directory(directory: str) -> None:
    """The sample is a side job: a directory this pod cannot write is a warning, not a reason to refuse serving."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-", delete=True)
        probe.close()
    except OSError as error:
        print(f"qfleet-runtime serve: warning: the prompt sample directory {directory} is not writable "
              f"({type(error).__name__}); no sample will be kept", file=sys.stderr, flush=True)


def model_repository(engine: Path, workdir: Path, overrides: dict[str, str]) -> Path:
    source = engine / triton_repo.CPU_DIR / triton_repo.MODEL_NAME
    if not (source / "config.pbtxt").is_file():
        raise StepError(f"no model repository at {source}: the build step must run first")
    target = workdir / "models" / triton_repo.MODEL_NAME
    shutil.copytree(source, target)
    config = target / "config.pbtxt"
    config.write_text(triton_repo.set_parameters(config.read_text(), overrides))
    return workdir / "models"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(binary: Path | str, repository: Path, backends: Path | None, args: argparse.Namespace,
            internal_http_port: int | None = None) -> list[str]:
    """Triton's command line; with `internal_http_port` its HTTP endpoint is on 127.0.0.1 behind the front."""
    http = ([f"--http-address={args.address}", f"--http-port={args.http_port}"] if internal_http_port is None else
            ["--http-address=127.0.0.1", f"--http-port={internal_http_port}",
             f"--http-header-forward-pattern={ARRIVAL_HEADER}"])
    cmd = [str(binary), f"--model-repository={repository}", *http,
           f"--grpc-address={args.address}", f"--grpc-port={args.grpc_port}",
           "--allow-metrics=true", f"--metrics-address={args.address}", f"--metrics-port={args.metrics_port}",
           "--strict-readiness=true", f"--exit-timeout-secs={args.exit_timeout_secs}",
           f"--log-verbose={args.log_verbose}"]
    if backends is not None:
        cmd += [f"--backend-directory={backends}", "--allow-gpu-metrics=false"]
    return cmd


def _die_with_parent() -> None:
    """Runs in the child before exec: Triton gets SIGTERM if this process dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class SignalRelay:
    """Passes the pod's signals on to Triton: SIGINT at once, SIGTERM after `drain_seconds` of draining (the front
    says not ready meanwhile and keeps serving)."""

    def __init__(self, child: subprocess.Popen, drain_seconds: float, drain: Callable[[], None] | None) -> None:
        self.child, self.drain_seconds, self.drain = child, drain_seconds, drain
        self.timer: threading.Timer | None = None

    def handle(self, signum: int, _frame: Any = None) -> None:
        if signum != signal.SIGTERM or self.drain_seconds <= 0:
            self._send(signum)
            return
        if self.timer is not None:
            return  # already draining: the SIGTERM comes when the drain ends
        if self.drain is not None:
            self.drain()
        print(f"qfleet-runtime serve: SIGTERM: draining {self.drain_seconds:g} s before Triton stops",
              file=sys.stderr, flush=True)
        self.timer = threading.Timer(self.drain_seconds, self._send, (signal.SIGTERM,))
        self.timer.daemon = True
        self.timer.start()

    def _send(self, signum: int) -> None:
        if self.child.poll() is None:
            self.child.send_signal(signum)


def wait_for(child: subprocess.Popen) -> int:
    """Waits for `child` in the main thread so that Python's signal handlers run as soon as a signal comes.

    The kernel may hand a signal sent to this process to any of its threads (the front's, a request's); its Python
    handler then runs in the main thread only once that thread leaves the call it is blocked in, and a plain
    `child.wait()` is a waitpid the kernel restarts without returning: the pod's SIGTERM would wait for Triton to exit
    by itself (CI saw a server still ready after its SIGTERM). Here the main thread sleeps in a select on Python's
    signal wakeup fd, which every handled signal writes to, the child's SIGCHLD included (a pidfd would need Linux
    5.3)."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    previous_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        while child.poll() is None:
            select.select([wake_read], [], [])
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
        return child.returncode
    finally:
        signal.signal(signal.SIGCHLD, previous_chld)
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_read)
        os.close(wake_write)


def run(args: argparse.Namespace) -> int:
    engine = Path(args.artifacts) / ENGINE_DIR
    manifest_path = engine / MANIFEST
    if not manifest_path.is_file():
        raise StepError(f"no build manifest at {manifest_path}: the build step must run first")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    if manifest.get("kvFormat") != args.kv_format:
        raise StepError(f"{engine} was built for KV {manifest.get('kvFormat')}, not {args.kv_format}")
    workdir = Path(tempfile.mkdtemp(prefix=f"qfleet-serve-{args.revision}-"))
    front: Front | None = None
    try:
        env = dict(os.environ)
        if getattr(args, "prompt_sample_dir", None):
            check_sample_directory(args.prompt_sample_dir)
        if manifest.get("target") == TARGET_GPU and not args.cpu:
            if getattr(args, "prompt_sample_dir", None):
                print("qfleet-runtime serve: warning: the TensorRT-LLM backend keeps no prompt sample "
                      "(--prompt-sample-dir applies to the qfleet backend)", file=sys.stderr, flush=True)
            binary = shutil.which("tritonserver") or "/opt/tritonserver/bin/tritonserver"
            cmd = command(binary, engine / triton_repo.GPU_DIR / "model_repository", None, args)
        else:
            root = wheel_root()
            backends = backend_directory(root, workdir)
            repository = model_repository(engine, workdir, serving_overrides(args))
            env["LD_LIBRARY_PATH"] = library_path(root)
            internal = free_port()
            cmd = command(root / "bin" / "tritonserver", repository, backends, args, internal)
            front = Front(args.address, args.http_port, internal).start()
        print(f"qfleet-runtime serve: {' '.join(cmd)}", file=sys.stderr, flush=True)
        child = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl
        relay = SignalRelay(child, args.drain_seconds, front.drain if front is not None else None)
        previous = {sig: signal.signal(sig, relay.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = wait_for(child)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if child.poll() is None:
                child.kill()
                child.wait()
        print(f"qfleet-runtime serve: tritonserver exited with {code}", file=sys.stderr, flush=True)
        return code if code >= 0 else 128 - code
    finally:
        if front is not None:
            front.stop()
        shutil.rmtree(workdir, ignore_errors=True)
