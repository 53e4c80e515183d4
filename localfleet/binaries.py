"""Pinned versions of the fleet's Go-built binaries, and where they are cached.

Every binary is built once from the Go module proxy by `build-binaries.sh` and cached by version under
`${XDG_CACHE_HOME:-~/.cache}/qfleet/bin/<component>-<version>/`. `KUBEBUILDER_ASSETS` (the envtest convention) may
point at a directory of prebuilt etcd / kube-apiserver / kubectl instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build-binaries.sh")


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    executables: tuple[str, ...]


KUBERNETES = Component("kubernetes", "1.34.10",
                       ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"))
ETCD = Component("etcd", "3.6.14", ("etcd",))
KWOK = Component("kwok", "0.8.0", ("kwok",))
HELM = Component("helm", "3.21.4", ("helm",))
PROMETHEUS = Component("prometheus", "3.16.0", ("prometheus",))
TRAEFIK = Component("traefik", "3.6.12", ("traefik",))
GATEWAY_API = Component("gateway-api", "1.4.0", ("gateway.networking.k8s.io_httproutes.yaml",))

ARGO_ROLLOUTS = Component("argo-rollouts", "1.10.1", ("rollouts-controller", "rollout-crd.yaml",
                                                       "argo-rollouts-clusterrole.yaml"))

COMPONENTS = (ETCD, KUBERNETES, KWOK, HELM, PROMETHEUS, TRAEFIK, GATEWAY_API)
BENCH_COMPONENTS = (ARGO_ROLLOUTS,)
"""Built only by `make bench`: the anchor it races (the fleet and its tests never need it)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qfleet" / "bin"


def component_dir(component: Component) -> Path:
    return cache_root() / f"{component.name}-{component.version}"


def _assets_override(executable: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / executable).is_file():
        return Path(assets) / executable
    return None


def path_of(executable: str) -> Path:
    """The binary to run for `executable`, from KUBEBUILDER_ASSETS or the cache; raises if it was never built."""
    override = _assets_override(executable)
    if override:
        return override
    for component in (*COMPONENTS, *BENCH_COMPONENTS):
        if executable in component.executables:
            candidate = component_dir(component) / executable
            if candidate.is_file():
                return candidate
            raise FileNotFoundError(
                f"{executable} {component.version} is not built yet: run `python -m localfleet build` "
                f"(or `make binaries`); it is cached in {component_dir(component)}")
    raise KeyError(f"unknown fleet executable {executable!r}")


def missing(components: tuple[Component, ...] = COMPONENTS) -> list[Component]:
    def present(c: Component) -> bool:
        return all(_assets_override(e) or (component_dir(c) / e).is_file() for e in c.executables)
    return [c for c in components if not present(c)]


def build_missing(log=print, components: tuple[Component, ...] = COMPONENTS) -> None:
    """Builds every component that is missing, one at a time (the machine has 2 cores)."""
    todo = missing(components)
    if not todo:
        log(f"localfleet: all binaries cached in {cache_root()}")
        return
    if shutil.which("go") is None:
        raise SystemExit("localfleet: `go` is not on PATH; it is needed once to build the fleet's binaries")
    for component in todo:
        log(f"localfleet: building {component.name} {component.version} (cold builds take minutes)")
        started = time.monotonic()
        env = dict(os.environ, K8S_MINOR=KUBERNETES.version.split(".")[1])
        subprocess.run(["bash", str(BUILD_SCRIPT), component.name, component.version, str(component_dir(component))],
                       check=True, env=env, stdout=sys.stderr)
        log(f"localfleet: built {component.name} in {time.monotonic() - started:.0f} s")
