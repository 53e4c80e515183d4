"""What a pod's containers need on this machine: the image's local environment, resolved env, volumes as mounts."""
from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodSetupError(RuntimeError):
    """The pod cannot run here; `reason` goes into the container's waiting/terminated state."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageEnvironment:
    path: tuple[str, ...]
    env: dict[str, str]


def image_table(raw: dict[str, Any] | None) -> dict[str, ImageEnvironment]:
    """The fleet file's `executor.images`: `${PYTHON_BIN}` stands for the bin directory of the interpreter that runs
    the fleet (its virtual environment), `${FLEET_ROOT}` for the directory that holds the localfleet package,
    `${RUNTIME_PYTHON_BIN}` for the bin directory of qfleet's cached runtime environment, `${QFLEET_CACHE}` for
    qfleet's cache (the runtime's models)."""
    places = {"${PYTHON_BIN}": str(Path(sys.executable).parent),
              "${FLEET_ROOT}": str(Path(__file__).resolve().parents[2]),
              "${RUNTIME_PYTHON_BIN}": str(_runtime_setup().venv / "bin"),
              "${QFLEET_CACHE}": str(_runtime_setup().cache)}

    def expand(value: str) -> str:
        for placeholder, actual in places.items():
            value = value.replace(placeholder, actual)
        return value

    table = {}
    for image, entry in (raw or {}).items():
        entry = entry or {}
        table[image] = ImageEnvironment(tuple(expand(p) for p in entry.get("path") or []),
                                        {k: expand(str(v)) for k, v in (entry.get("env") or {}).items()})
    return table


@dataclass(frozen=True)
class RuntimeSetup:
    cache: Path
    venv: Path


def _runtime_setup() -> RuntimeSetup:
    """Where runtime_image/setup_env.py keeps the runtime's cache (models) and virtual environment. Nothing is built
    here: `make runtime-env` (or `make test`) builds them; a pod of an image that needs them fails until then."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "runtime_image" / "setup_env.py"
    spec = importlib.util.spec_from_file_location("qfleet_runtime_setup_env", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = module.cache_root()
    return RuntimeSetup(cache, cache / "venvs" / f"runtime-{module.venv_key(module.pins())}")


def resolve_image(image: str, table: dict[str, ImageEnvironment]) -> ImageEnvironment:
    if image in table:
        return table[image]
    name, _, tag = image.rpartition(":")
    repository = name if name and "/" not in tag else image
    if repository in table:
        return table[repository]
    raise PodSetupError("ErrImageNeverPull",
                        f"image {image!r} is not in the executor's image table (fleet file, executor.images): "
                        f"map it to a local environment or use one of {', '.join(sorted(table)) or 'none'}")


def _field(pod: dict, path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod["metadata"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": pod_ip, "status.hostIP": host_ip}
    if path in simple:
        return simple[path]
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return (meta.get(kind) or {}).get(path[len(prefix):-2], "")
    raise PodSetupError("CreateContainerConfigError", f"unsupported fieldRef {path}")


def container_env(pod: dict, container: dict, image: ImageEnvironment, pod_ip: str, host_ip: str,
                  read_secret: Callable[[str, str], dict], read_config_map: Callable[[str, str], dict]) -> dict:
    env = {"PATH": ":".join([*image.path, BASE_PATH]), "HOME": "/root", "HOSTNAME": pod["metadata"]["name"],
           **image.env}
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(read_config_map(namespace, source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update({k: base64.b64decode(v).decode() for k, v in
                        read_secret(namespace, source["secretRef"]["name"]).items()})
    for var in container.get("env") or []:
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = var.get("value", "")
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            env[var["name"]] = _field(pod, ref["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in ref:
            kind, _, resource = ref["resourceFieldRef"]["resource"].partition(".")
            env[var["name"]] = str(((container.get("resources") or {}).get(kind) or {}).get(resource, "0"))
        elif "secretKeyRef" in ref:
            data = read_secret(namespace, ref["secretKeyRef"]["name"])
            key = ref["secretKeyRef"]["key"]
            if key not in data:
                raise PodSetupError("CreateContainerConfigError",
                                    f"secret {ref['secretKeyRef']['name']} has no key {key}")
            env[var["name"]] = base64.b64decode(data[key]).decode()
        elif "configMapKeyRef" in ref:
            data = read_config_map(namespace, ref["configMapKeyRef"]["name"])
            env[var["name"]] = data.get(ref["configMapKeyRef"]["key"], "")
    return env


def volume_sources(pod: dict, pod_dir: Path, claim_path: Callable[[str, str], str],
                   read_secret: Callable[[str, str], dict], read_config_map: Callable[[str, str], dict]) -> dict:
    """Each volume as a host directory (emptyDir, a claim's directory, files written for ConfigMaps and Secrets)."""
    namespace = pod["metadata"]["namespace"]
    sources: dict[str, str] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            path = pod_dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
        elif "persistentVolumeClaim" in volume:
            path = Path(claim_path(namespace, volume["persistentVolumeClaim"]["claimName"]))
            path.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume or "secret" in volume:
            path = pod_dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                files = read_config_map(namespace, volume["configMap"]["name"])
            else:
                files = {k: base64.b64decode(v).decode() for k, v in
                         read_secret(namespace, volume["secret"]["secretName"]).items()}
            for key, content in files.items():
                (path / key).write_text(content)
        elif "projected" in volume:
            continue  # service-account tokens: the operator's pods opt out (automountServiceAccountToken: false)
        else:
            raise PodSetupError("CreateContainerConfigError",
                                f"volume {name}: only emptyDir, persistentVolumeClaim, configMap and secret are "
                                "supported by the local executor")
        sources[name] = str(path)
    return sources


def image_host_paths(image: ImageEnvironment) -> list[str]:
    """Host directories the image's programs come from (its PATH entries and path lists in its env, e.g. PYTHONPATH).
    A container sees the host's filesystem here, so a volume mounted over a parent of one (an emptyDir at /tmp over a
    checkout in /tmp) would hide the program: container_mounts binds these back on top."""
    candidates = [*image.path, *(part for value in image.env.values() for part in value.split(":"))]
    return sorted({c for c in candidates if c.startswith("/") and Path(c).is_dir()})


def container_mounts(container: dict, sources: dict[str, str], termination_file: Path,
                     host_paths: list[str] | tuple[str, ...] = ()) -> list:
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in sources:
            continue
        source = sources[mount["name"]]
        if mount.get("subPath"):
            source = os.path.join(source, mount["subPath"])
            Path(source).mkdir(parents=True, exist_ok=True)
        mounts.append([source, mount["mountPath"], bool(mount.get("readOnly"))])
    mounts.append([str(termination_file), container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
                   False])
    targets = [Path(target) for _, target, _ in mounts]
    for host_path in host_paths:
        if any(target in Path(host_path).parents for target in targets):
            mounts.append([host_path, host_path, True])
    return mounts
