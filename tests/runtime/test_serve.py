"""`qfleet-runtime serve` for real: the wheel's tritonserver with the small model, KV stored in FP8, NVFP4 and BF16.

Each server is a `python -m qfleet_runtime serve` process on free loopback ports, waited for on /v2/health/ready
(with a deadline, failing fast if it exits) and stopped with SIGTERM in its fixture (after its drain), which also
checks that it exited cleanly. One server per format and class; the fault-switch and BF16 servers live only inside their test.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pytriton")
np = pytest.importorskip("numpy")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

from qfleet.api import metrics as contract  # noqa: E402
from qfleet.capacity import kv_bytes_per_token  # noqa: E402
from qfleet.formats import kv_format  # noqa: E402
from qfleet.shapes import known_shape  # noqa: E402

from .conftest import SMOLLM, SOURCE_ROOTS, common, run_cli  # noqa: E402

MODEL = "qfleet"
READY_DEADLINE = 180.0
STOP_DEADLINE = 60.0
DRAIN_SECONDS = 5.0
"""serve's --drain-seconds default: after SIGTERM, not ready but serving, before Triton stops."""
PREFIX_BUDGET = 2 << 20
"""2 MiB: 5 BF16 blocks of 16 tokens (368,640 B each), about 20 NVFP4 blocks (103,680 B each)."""

LONG_PROMPT = (
    "The Python language reference describes the syntax and the core semantics of the language. It is terse, "
    "but attempts to be exact and complete. The semantics of non-essential built-in object types and of the "
    "built-in functions and modules are described in the library reference. For an informal introduction to "
    "the language, see the tutorial; for C or C++ programmers, two additional manuals exist.")
DOCUMENTS = [
    "Context: a hash table is a data structure that implements an associative array, mapping keys to values. "
    "It uses a hash function to compute an index, also called a hash code, into an array of buckets or slots, "
    "from which the desired value can be found. During lookup, the key is hashed and the resulting hash "
    "indicates where the corresponding value is stored. Question: what does a hash table map?",
    "Context: a binary search tree is a rooted binary tree whose internal nodes each store a key greater than "
    "all the keys in the node's left subtree and less than those in its right subtree. Lookup, insertion and "
    "deletion use the principle of binary search: each comparison allows the operation to skip about half of "
    "the remaining tree. Question: why is lookup in a balanced tree fast?",
    "Context: garbage collection is a form of automatic memory management. The collector attempts to reclaim "
    "memory that was allocated by the program but is no longer referenced. Reference counting frees an object "
    "as soon as its count of references drops to zero, while a tracing collector starts from the roots and "
    "finds every reachable object, so unreachable cycles are freed too. Question: what does a tracing "
    "collector find?",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- artifacts: calibrate + build, once per format ------------------------------------------------------------------

def calibrate_and_build(root: Path, kv: str) -> Path:
    artifacts = root / "r-serve" / kv
    samples = ["--samples", "1", "--max-seq-len", "16"] if kv == "bf16" else ["--samples", "16", "--max-seq-len", "192"]
    code, _, stderr = run_cli([*common("calibrate", kv, artifacts, root / f"{kv}-calibrate.json"),
                               "--model-uri", SMOLLM, "--model-revision", "main", "--weights", "bf16",
                               "--dataset", "builtin", *samples, "--analysis-samples", "1"])
    assert code == 0, stderr[-3000:]
    code, built, stderr = run_cli([*common("build", kv, artifacts, root / f"{kv}-build.json"),
                                   "--backend", "tensorrt-llm", "--max-batch-size", "4", "--max-seq-len", "512",
                                   "--max-num-tokens", "512", "--tensor-parallel", "1",
                                   "--kv-cache-free-gpu-memory-fraction", "0.9", "--compute-capability", "10.0"])
    assert code == 0, stderr[-3000:]
    assert built["target"] == "qfleet-python-backend"
    return artifacts


@pytest.fixture(scope="module")
def artifacts(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("serve")
    built: dict[str, Path] = {}

    def get(kv: str) -> Path:
        if kv not in built:
            built[kv] = calibrate_and_build(root, kv)
        return built[kv]

    return get


# -- a server process -------------------------------------------------------------------------------------------------

@dataclass
class Server:
    kv: str
    process: subprocess.Popen
    http: int
    grpc: int
    metrics_port: int
    log: Path
    started: float
    ready_seconds: float = 0.0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        self.ready_seconds = time.monotonic() - self.started
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)  # polling interval of the readiness probe, not a wait for a result
        raise AssertionError(f"not ready within {READY_DEADLINE} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def generate(self, prompt: str, max_tokens: int = 8) -> tuple[str, int]:
        client = httpclient.InferenceServerClient(self.http_url, network_timeout=120.0)
        try:
            text = httpclient.InferInput("text_input", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[prompt]], dtype=object))
            limit = httpclient.InferInput("max_tokens", [1, 1], "INT32")
            limit.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
            result = client.infer(MODEL, [text, limit])
            return (result.as_numpy("text_output")[0][0].decode(), int(result.as_numpy("num_output_tokens")[0][0]))
        finally:
            client.close()

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode())

    def value(self, name: str, **labels: str) -> float:
        """The sum of a metric's series with this server's kv_format and the given labels."""
        wanted = {("kv_format", self.kv), ("model", MODEL), *labels.items()}
        return sum(v for (n, ls), v in self.scrape().items() if n == name and wanted <= ls)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
                raise AssertionError(f"serve did not stop within {STOP_DEADLINE} s of SIGTERM:\n{self.tail()}")
        return self.process.returncode


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    series = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not match or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        series[(match.group(1), labels)] = float(match.group(3))
    return series


def start_server(artifacts: Path, kv: str, log_dir: Path, env: dict[str, str] | None = None,
                 *extra: str) -> Server:
    http, grpc, metrics_port = free_port(), free_port(), free_port()
    child_env = dict(os.environ) | (env or {})
    child_env["PYTHONPATH"] = os.pathsep.join([*SOURCE_ROOTS, child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = log_dir / f"serve-{kv}-{http}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "qfleet_runtime", "serve", "--revision", "r-serve", "--kv-format", kv,
             "--artifacts", str(artifacts), "--address", "127.0.0.1", "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics_port), "--threads", "1", *extra],
            env=child_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(kv, process, http, grpc, metrics_port, log, time.monotonic())
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def serving(artifacts: Path, kv: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None
            ) -> Iterator[Server]:
    server = start_server(artifacts, kv, log_dir, env, *extra)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"serve exited with {code} after SIGTERM:\n{server.tail()}"


def planner_bytes_per_token(kv: str) -> float:
    shape = known_shape(SMOLLM)
    assert shape is not None
    return float(kv_bytes_per_token(shape, kv_format(kv)))


def fallback_rate(server: Server, prompts: list[str], max_tokens: int = 8) -> tuple[float, float, float]:
    """(fallback tokens, the per-token share, the fallback rate: fallback entries over quantized entries)."""
    names = (contract.KV_FALLBACK_TOKENS, contract.KV_TOKENS, contract.KV_FALLBACK_ENTRIES, contract.KV_ENTRIES)
    before = [server.value(name) for name in names]
    for prompt in prompts:
        server.generate(prompt, max_tokens)
    fallback, written, fallback_entries, entries = (server.value(n) - b for n, b in zip(names, before))
    assert written > 0 and entries > 0
    return fallback, fallback / written, fallback_entries / entries


def prefix_hit_rate(server: Server) -> float:
    before = (server.value(contract.PREFIX_CACHE_HITS), server.value(contract.PREFIX_CACHE_MISSES))
    for _ in range(2):
        for document in DOCUMENTS:
            server.generate(document, 1)
    hits = server.value(contract.PREFIX_CACHE_HITS) - before[0]
    misses = server.value(contract.PREFIX_CACHE_MISSES) - before[1]
    assert hits + misses >= 2 * 3 * 4, "each document should span at least 4 complete blocks"
    return hits / (hits + misses)


# -- FP8 --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def fp8_server(artifacts, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with serving(artifacts("fp8"), "fp8", tmp_path_factory.mktemp("fp8-logs"), "--quality-sample-share", "1.0") as s:
        yield s


@pytest.fixture(scope="class")
def nvfp4_server(artifacts, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with serving(artifacts("nvfp4"), "nvfp4", tmp_path_factory.mktemp("nvfp4-logs"),
                 "--prefix-cache-bytes", str(PREFIX_BUDGET), "--quality-sample-share", "0") as s:
        yield s


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Server:
    """The class's server: fp8_server or nvfp4_server, named by the class's `server_fixture`."""
    return request.getfixturevalue(request.cls.server_fixture)


class TestFp8:
    server_fixture = "fp8_server"

    def test_text_comes_back_over_http_and_grpc(self, server: Server) -> None:
        # The warm-up generation before ready is counted nowhere: a fresh server has served no request.
        assert server.value(contract.REQUESTS) == 0 and server.value(contract.KV_TOKENS) == 0
        text, generated = server.generate("def fibonacci(n):", 12)
        assert text.strip() and generated >= 1
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        try:
            assert client.is_server_ready() and client.is_model_ready(MODEL)
            prompt = grpcclient.InferInput("text_input", [1, 1], "BYTES")
            prompt.set_data_from_numpy(np.array([["The capital of France is"]], dtype=object))
            result = client.infer(MODEL, [prompt])
            assert result.as_numpy("text_output")[0][0].decode().strip()
        finally:
            client.close()
        assert server.ready_seconds < READY_DEADLINE

    def test_every_documented_metric_is_on_the_metrics_port(self, server: Server) -> None:
        server.generate(LONG_PROMPT, 8)
        deadline = time.monotonic() + 120  # the quality sample runs in the background
        while server.value(contract.QUALITY_TOP1 + "_count") < 1:
            assert time.monotonic() < deadline, "no quality sample was exported"
            time.sleep(0.2)
        scraped = server.scrape()
        names = {name for name, _ in scraped}
        documented = set(re.findall(r"^\| `(qfleet_[a-z0-9_]+)`", (Path(__file__).parents[2] / "docs" / "metrics.md")
                                    .read_text(), flags=re.M))
        assert documented == set(contract.ALL)
        for name in documented:
            kind_names = ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if name.endswith(
                ("_seconds", "_nats", "_ratio")) else {name})
            assert kind_names <= names, name
            labelled = [ls for n, ls in scraped if n in kind_names]
            assert all({("model", MODEL), ("kv_format", "fp8")} <= ls for ls in labelled), name
        assert "nv_inference_request_success" in names
        assert server.value(contract.REQUESTS, outcome="success") >= 1
        assert server.value(contract.REQUEST_DURATION + "_count") >= 1
        assert server.value(contract.TOKENS, kind="generated") >= 1
        assert 0 <= server.value(contract.QUALITY_TOP1 + "_sum") <= server.value(contract.QUALITY_TOP1 + "_count")

    def test_measured_kv_bytes_per_token_match_the_capacity_planner(self, server: Server) -> None:
        server.generate(LONG_PROMPT, 16)
        measured = server.value(contract.KV_BYTES_PER_TOKEN)
        planned = planner_bytes_per_token("fp8")
        assert planned == 11520
        assert abs(measured / planned - 1) < 0.01, (measured, planned)

    def test_the_fallback_counter_rises_when_the_fault_switch_shrinks_the_scales(
            self, server: Server, artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        prompts = [LONG_PROMPT, DOCUMENTS[0]]
        _, normal, normal_entries = fallback_rate(server, prompts)
        with serving(artifacts("fp8"), "fp8", tmp_path, env={"QFLEET_FAULT_KV_SCALE": "0.5"}) as faulty:
            count, rate, entry_rate = fallback_rate(faulty, prompts)
            assert count > 0
            assert rate > max(0.5, 2 * normal), (rate, normal)
        # The gate's rate (per entry) puts the healthy server under the default 0.5% and the stale calibration above.
        assert normal_entries < 0.005 < entry_rate, (normal_entries, entry_rate)

    def test_latency_counts_from_arrival_including_the_wait_behind_another_request(self, server: Server) -> None:
        """B arrives while A is being generated, so it waits in Triton's queue; its latency starts at arrival (the
        HTTP front's stamp), not when `execute` picks it up: the server's sum matches what the clients saw."""
        names = (contract.REQUEST_DURATION + "_sum", contract.REQUEST_DURATION + "_count")
        before = [server.value(name) for name in names]
        idle_bytes = server.value(contract.KV_CACHE_BYTES)
        seen: dict[str, float] = {}

        def timed(key: str, prompt: str, tokens: int) -> None:
            t0 = time.monotonic()
            server.generate(prompt, tokens)
            seen[key] = time.monotonic() - t0

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(timed, "a", DOCUMENTS[1], 32)
            deadline = time.monotonic() + 60
            while server.value(contract.KV_CACHE_BYTES) <= idle_bytes:  # A is in its decode loop
                assert time.monotonic() < deadline and not first.done(), "A never showed its KV bytes in flight"
            second = pool.submit(timed, "b", DOCUMENTS[2], 4)
            first.result(), second.result()
        total, count = (server.value(n) - b for n, b in zip(names, before))
        assert count == 2
        client = seen["a"] + seen["b"]
        # Timed from execute, B would miss the rest of A (a second or more on CPU); the front and the client's own
        # overhead are a few milliseconds.
        assert client - 0.25 <= total <= client + 0.05, (total, seen)

    def test_last_sigterm_drains_not_ready_but_still_serving_then_stops_cleanly(self, server: Server) -> None:
        """The class's last test (it ends the server): a pod being deleted keeps answering the requests the gateway
        still routes to it (a 502 at promotion otherwise) while its readiness says it is going."""
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        deadline = signalled + DRAIN_SECONDS
        status = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            if status == 503:
                break
            time.sleep(0.05)  # polling interval of a readiness probe, not a wait for a result
        assert status == 503, f"still ready after SIGTERM:\n{server.tail()}"
        text, generated = server.generate("The capital of France is", 2)
        assert text.strip() and generated >= 1
        assert time.monotonic() - signalled < DRAIN_SECONDS, "the request was not served within the drain"
        server.process.wait(timeout=STOP_DEADLINE)
        assert server.process.returncode == 0, server.tail()
        assert time.monotonic() - signalled >= DRAIN_SECONDS
        assert "draining 5 s before Triton stops" in server.tail()


# -- NVFP4 (and BF16 on the same prefix-cache budget) -----------------------------------------------------------------

class TestNvfp4:
    server_fixture = "nvfp4_server"

    def test_text_comes_back(self, server: Server) -> None:
        text, generated = server.generate("In computer science, a hash table is", 12)
        assert text.strip() and generated >= 1

    def test_measured_kv_bytes_per_token_match_the_capacity_planner(self, server: Server) -> None:
        server.generate(LONG_PROMPT, 16)
        measured = server.value(contract.KV_BYTES_PER_TOKEN)
        planned = planner_bytes_per_token("nvfp4")
        assert planned == 6480 and math.isclose(planned / planner_bytes_per_token("bf16"), 0.5625 / 2)
        assert abs(measured / planned - 1) < 0.01, (measured, planned)

    def test_the_same_prefix_budget_gives_nvfp4_a_higher_hit_rate_than_bf16(
            self, server: Server, artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        nvfp4 = prefix_hit_rate(server)
        with serving(artifacts("bf16"), "bf16", tmp_path, "--prefix-cache-bytes", str(PREFIX_BUDGET),
                     "--quality-sample-share", "0") as bf16_server:
            bf16 = prefix_hit_rate(bf16_server)
        assert nvfp4 > bf16, (nvfp4, bf16)
        assert nvfp4 >= 0.4
        held = server.value(contract.KV_CACHE_BYTES)
        assert 0 < held <= PREFIX_BUDGET
