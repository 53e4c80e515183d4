"""One local fleet: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK and Prometheus, as processes.

Everything a fleet writes lives in its run directory: PKI, kubeconfig, data, logs and `state.json` (ports and pids),
which is how `down` and `status` find what `up` started. Ports are picked free on 127.0.0.1 at `up`, so two fleets
(a developer's and a test run's) can run side by side.
"""
from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localfleet import binaries, gateway, network, nodes, pki, processes
from localfleet.executor import kubelet as executor_kubelet
from localfleet import prometheus as prom_config
from localfleet.network import SERVICE_RANGE

KWOK_CONFIG = Path(__file__).with_name("kwok.yaml")
PORT_NAMES = ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok", "prometheus", "gateway",
              "traefik_api", "traefik_metrics")
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "executor",
               "prometheus", "traefik")


CONTROLLER_QPS = 100
AUDIT_LOG_MAX_MB = 100_000
"""The audit log's size before the apiserver rotates it: larger than any run of the fleet writes."""


def node_monitor_grace_seconds(simulated_nodes: int) -> int:
    """How long a node's Lease may go unrenewed before it is NotReady: Kubernetes' 50 s for the default pools, longer
    for a benchmark's thousand nodes, whose Leases KWOK renews late while the machine's two cores are busy. A node
    marked NotReady marks its pods NotReady, and KWOK, unlike a kubelet, never makes a running pod Ready again."""
    return max(50, simulated_nodes // 4)


@dataclass
class FleetState:
    run_dir: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0


class Fleet:
    def __init__(self, run_dir: Path, fleet_file: Path = nodes.DEFAULT_FLEET_FILE, scrape_interval: str = "2s",
                 name: str = "qfleet-local", control_plane_only: bool = False, audit: bool = False,
                 audit_policy: Path | None = None, extra_scrape_configs: list[dict] | None = None):
        """`control_plane_only`: etcd and kube-apiserver alone (what tests of the API itself need, e.g. the spec
        fuzzing): no controllers, nodes, Prometheus or gateway. `audit`: the apiserver logs every write (verb, object,
        user agent) as JSON lines to `audit_log`, which is how the chaos suite counts writes at the apiserver;
        `audit_policy`, a policy file of the caller's instead (the benchmark attributes every request to a
        controller). `extra_scrape_configs`: more Prometheus scrape jobs."""
        self.audit = audit
        self.audit_policy = audit_policy
        self.extra_scrape_configs = list(extra_scrape_configs or [])
        self.run_dir = Path(run_dir).resolve()
        self.control_plane_only = control_plane_only
        self.fleet_file = fleet_file
        self.scrape_interval = scrape_interval
        self.name = name

    # ---- paths and addresses -------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "audit.log"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def state(self) -> FleetState | None:
        if not self.state_file.exists():
            return None
        return FleetState(**json.loads(self.state_file.read_text()))

    def _save(self, state: FleetState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    def apiserver_url(self, state: FleetState | None = None) -> str:
        state = state or self.state()
        return f"https://127.0.0.1:{state.ports['apiserver']}"

    def gateway_url(self, state: FleetState | None = None) -> str:
        state = state or self.state()
        return f"http://127.0.0.1:{state.ports['gateway']}"

    def prometheus_url(self, state: FleetState | None = None) -> str:
        state = state or self.state()
        return f"http://127.0.0.1:{state.ports['prometheus']}"

    def running(self) -> dict[str, bool]:
        state = self.state()
        if state is None:
            return {}
        return {name: processes.is_ours(pid, str(self.run_dir)) for name, pid in state.pids.items()}

    def is_up(self) -> bool:
        alive = self.running()
        expected = START_ORDER[:2] if self.control_plane_only else START_ORDER
        return bool(alive) and set(alive) == set(expected) and all(alive.values())

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def up(self, log=print) -> FleetState:
        """Starts every process and waits until the nodes are Ready and Prometheus answers; cleans up on failure."""
        network.ensure_blackhole()
        if self.is_up():
            log(f"localfleet: already running in {self.run_dir}")
            return self.state()
        if self.state() is not None:
            self.down(log=lambda *_: None)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        state = FleetState(run_dir=str(self.run_dir), ports=dict(zip(PORT_NAMES, processes.free_ports(len(PORT_NAMES)))),
                           started_at=time.time())
        self._save(state)
        try:
            self._start_all(state)
        except BaseException:
            self.down(log=lambda *_: None)
            raise
        log(f"localfleet: up in {time.monotonic() - started:.1f} s ({self.run_dir})")
        return state

    def _start(self, state: FleetState, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None):
        process = processes.start(name, argv, self.log_dir, env=env, cwd=cwd)
        state.pids[name] = process.pid
        self._save(state)
        return process

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _start_all(self, state: FleetState) -> None:
        p, run = state.ports, self.run_dir
        pki.create(self.pki_dir)
        ca, crt, key = (str(self.pki_dir / f) for f in ("ca.crt", "admin.crt", "admin.key"))

        self._start_etcd(state)
        self._start_apiserver(state)
        pki.write_kubeconfig(self.kubeconfig, self.pki_dir, self.apiserver_url(state), self.name)
        if self.control_plane_only:
            return

        kubeconfig = str(self.kubeconfig)
        manifests = nodes.node_manifests(nodes.load_pools(self.fleet_file))
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                  "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"]
        controller_manager = self._start(state, "kube-controller-manager", [
            str(binaries.path_of("kube-controller-manager")), *common, f"--secure-port={p['controller_manager']}",
            f"--cert-dir={run / 'controller-manager'}", f"--root-ca-file={ca}",
            f"--service-account-private-key-file={key}", "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca}", f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
            "--pvclaimbinder-sync-period=1s",  # bind claims to volumes within a second, not 15 s
            f"--node-monitor-grace-period={node_monitor_grace_seconds(len(manifests))}s",
            # the Job and ReplicaSet controllers create every simulated pod: at the default 20 requests a second they,
            # not the machine, set the pace of a thousand-model fleet
            f"--kube-api-qps={CONTROLLER_QPS}", f"--kube-api-burst={2 * CONTROLLER_QPS}"])
        scheduler = self._start(state, "kube-scheduler", [
            str(binaries.path_of("kube-scheduler")), *common, f"--secure-port={p['scheduler']}",
            f"--cert-dir={run / 'scheduler'}"])
        insecure = ssl._create_unverified_context()  # their serving certs are self-signed; this only reads /healthz
        for name, port, process in (("kube-controller-manager", p["controller_manager"], controller_manager),
                                    ("kube-scheduler", p["scheduler"], scheduler)):
            processes.wait_until(name, lambda port=port: processes.http_ok(f"https://127.0.0.1:{port}/healthz",
                                                                            insecure),
                                 60, process=process, log=self._log(name))

        from localfleet import kube  # imported late: the kubernetes client is only needed once the API is up
        api = kube.client(self.kubeconfig)
        kube.create_nodes(api, manifests)
        kwok = self._start(state, "kwok", [
            str(binaries.path_of("kwok")), f"--kubeconfig={kubeconfig}", f"--config={KWOK_CONFIG}",
            f"--server-address=127.0.0.1:{p['kwok']}",
            "--v=WARN"])  # INFO logs every node lease renewal: a core's worth of logging at a thousand nodes
        names = [m["metadata"]["name"] for m in manifests]
        # KWOK readies nodes a few at a time: a benchmark's thousand nodes need longer than the default pools' 60 s
        processes.wait_until("simulated nodes Ready", lambda: kube.nodes_ready(api, names), max(60, len(names) / 2),
                             interval=max(0.2, len(names) / 500), process=kwok, log=self._log("kwok"))

        executor = self._start_executor(state)
        executor_nodes = [m["metadata"]["name"] for m in nodes.load_executor(self.fleet_file).node_manifests()]
        processes.wait_until("executor nodes Ready", lambda: kube.nodes_ready(api, executor_nodes), 60,
                             process=executor, log=self._log("executor"))

        self._start_prometheus(state)

        gateway.install(api, p["gateway"])
        gateway.create_gateway(api, p["gateway"])
        traefik = self._start(state, "traefik", gateway.traefik_argv(p["gateway"], p["traefik_api"],
                                                                          self.log_dir / "traefik-provider.log",
                                                                          p.get("traefik_metrics")),
                              env=dict(os.environ, KUBECONFIG=kubeconfig))
        processes.wait_until("the gateway to be programmed", lambda: gateway.gateway_programmed(api), 60,
                             process=traefik, log=self._log("traefik"))

    def _start_etcd(self, state: FleetState) -> None:
        p, run = state.ports, self.run_dir
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd_peer']}"
        etcd = self._start(state, "etcd", [
            str(binaries.path_of("etcd")), "--name=node0", f"--data-dir={run / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}", "--unsafe-no-fsync", "--auto-compaction-retention=1",
            "--log-level=warn"])
        processes.wait_until("etcd", lambda: processes.http_ok(f"{etcd_url}/health"), 30, process=etcd,
                             log=self._log("etcd"))

    def _start_apiserver(self, state: FleetState) -> None:
        p, run = state.ports, self.run_dir
        ca, crt, key = (str(self.pki_dir / f) for f in ("ca.crt", "admin.crt", "admin.key"))
        apiserver = self._start(state, "kube-apiserver", [
            str(binaries.path_of("kube-apiserver")), f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--etcd-prefix=/registry",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            f"--cert-dir={run / 'apiserver'}", f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
            f"--client-ca-file={ca}", "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={key}", f"--service-account-signing-key-file={key}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            # the `kubernetes` Service would get 127.0.0.1 as its endpoint, which the API rejects (loopback)
            "--endpoint-reconciler-type=none", "--profiling=false", *self._audit_args()])
        tls = ssl.create_default_context(cafile=ca)
        tls.load_cert_chain(crt, key)
        processes.wait_until("kube-apiserver", lambda: processes.http_ok(f"{self.apiserver_url(state)}/readyz", tls),
                             60, process=apiserver, log=self._log("kube-apiserver"))

    def stop_part(self, name: str) -> None:
        """Stops one control-plane process ("etcd" or "kube-apiserver") as an outage would; `start_part` brings it
        back on the same port and data (the chaos suite's faults)."""
        processes.stop(self.state().pids[name], str(self.run_dir))

    def start_part(self, name: str) -> None:
        starters = {"etcd": self._start_etcd, "kube-apiserver": self._start_apiserver}
        starters[name](self.state())

    def _audit_args(self) -> list[str]:
        if not self.audit and self.audit_policy is None:
            return []
        policy = self.audit_policy or self.run_dir / "audit-policy.yaml"
        if self.audit_policy is None:
            policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                          "omitStages": ["RequestReceived"],
                                          "rules": [{"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
                                                    {"level": "None"}]}))
        # blocking: an event is in the file before its response is sent, so a reader never misses the last.
        # The log rotates past maxsize (0 is not "never": the log library reads it as its default, 100 MB, which a
        # benchmark's 90,000 requests pass); readers also read the rotated files (benchmarks/fleet/audit.py).
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking",
                "--audit-log-format=json", f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}"]

    def _start_prometheus(self, state: FleetState) -> None:
        run, p = self.run_dir, state.ports
        config = run / "prometheus.yml"
        prom_config.write_config(config, apiserver_url=self.apiserver_url(state), pki_dir=self.pki_dir,
                                 self_address=f"127.0.0.1:{p['prometheus']}", scrape_interval=self.scrape_interval,
                                 extra_scrape_configs=[*self._traefik_scrape(state), *self.extra_scrape_configs])
        prometheus = self._start(state, "prometheus", [
            str(binaries.path_of("prometheus")), f"--config.file={config}",
            f"--storage.tsdb.path={run / 'prometheus-data'}", f"--web.listen-address=127.0.0.1:{p['prometheus']}",
            "--web.enable-lifecycle", "--storage.tsdb.retention.time=1d", "--log.level=warn",
            # apply discovered targets within half a second instead of the default 5 s: pods come and go in tests
            "--scrape.discovery-reload-interval=500ms"])
        processes.wait_until("prometheus to scrape itself", lambda: self._prometheus_has_data(state), 60,
                             process=prometheus, log=self._log("prometheus"))

    def _traefik_scrape(self, state: FleetState) -> list[dict]:
        """Traefik's metrics, on the port `up` gave them (none in a state written before they had one, or a fleet
        with no data plane)."""
        port = state.ports.get("traefik_metrics")
        return [] if port is None or self.control_plane_only else [gateway.scrape_config(port)]

    def stop_prometheus(self) -> None:
        """Stops Prometheus as an outage would (the analysis then has no answers); `start_prometheus` brings it back
        on the same port and data."""
        processes.stop(self.state().pids["prometheus"], str(self.run_dir))

    def start_prometheus(self) -> None:
        self._start_prometheus(self.state())

    def _start_executor(self, state: FleetState):
        return self._start(state, "executor", [
            sys.executable, "-m", "localfleet.executor", f"--run-dir={self.run_dir}", f"--kubeconfig={self.kubeconfig}",
            f"--fleet-file={self.fleet_file}"], cwd=Path(__file__).resolve().parents[1])

    def restart_executor(self) -> None:
        """Stops the executor (its pods keep running) and starts it again; it adopts them from its state file."""
        state = self.state()
        processes.stop(state.pids["executor"], str(self.run_dir))
        self._start_executor(state)

    def _prometheus_has_data(self, state: FleetState) -> bool:
        url = f"{self.prometheus_url(state)}/api/v1/query?query=up%7Bjob%3D%22prometheus%22%7D"
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return bool(json.load(response)["data"]["result"])

    def down(self, log=print) -> list[str]:
        """Stops, newest first, every process `up` recorded; returns the names it stopped."""
        state = self.state()
        if state is None:
            log(f"localfleet: nothing to stop in {self.run_dir}")
            return []
        stopped = []
        for name in reversed(list(state.pids)):
            if processes.stop(state.pids[name], str(self.run_dir)):
                stopped.append(name)
        executor_kubelet.cleanup(self.run_dir)
        self.state_file.unlink(missing_ok=True)
        log(f"localfleet: stopped {', '.join(stopped) or 'nothing (no process was running)'}")
        return stopped

    def status(self) -> dict:
        state = self.state()
        if state is None:
            return {"runDir": str(self.run_dir), "running": False}
        return {
            "runDir": str(self.run_dir),
            "running": self.is_up(),
            "processes": {name: {"pid": state.pids[name], "alive": alive} for name, alive in self.running().items()},
            "kubeconfig": str(self.kubeconfig),
            "apiserver": self.apiserver_url(state),
            "prometheus": self.prometheus_url(state),
            "gateway": self.gateway_url(state),
            "logs": str(self.log_dir),
        }
