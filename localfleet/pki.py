"""Certificates and kubeconfig for one fleet: a CA and one admin identity (system:masters), as kwokctl does.

The admin certificate serves the apiserver, authenticates every component and signs service-account tokens.
"""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

from localfleet.network import KUBERNETES_SERVICE_IP

SANS = ("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local", "IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def create(pki_dir: Path) -> None:
    """Writes ca.{crt,key} and admin.{crt,key} into pki_dir, once."""
    if (pki_dir / "admin.crt").exists():
        return
    pki_dir.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=qfleet-localfleet-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki_dir)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=qfleet-admin",
             "-keyout", "admin.key", "-out", "admin.csr", cwd=pki_dir)
    (pki_dir / "admin.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=" + ",".join(SANS) + "\n")
    _openssl("x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", "admin.ext", "-out", "admin.crt", cwd=pki_dir)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, pki_dir: Path, server: str, name: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server,
                                                 "certificate-authority-data": _b64(pki_dir / "ca.crt")}}],
        "users": [{"name": f"{name}-admin", "user": {"client-certificate-data": _b64(pki_dir / "admin.crt"),
                                                     "client-key-data": _b64(pki_dir / "admin.key")}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
