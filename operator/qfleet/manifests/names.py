"""Deterministic child names and the labels that tie children to their QuantizedModel."""

from __future__ import annotations

import hashlib

from qfleet.api.group import API_VERSION, KIND

MAX_NAME = 63
"""Job names become the pods' job-name label value, so they must fit a label (63 characters)."""

LABEL_MODEL = "qfleet.io/model"
LABEL_REVISION = "qfleet.io/revision"
LABEL_STEP = "qfleet.io/step"
LABEL_KV_FORMAT = "qfleet.io/kv-format"
LABEL_ROLE = "qfleet.io/role"
MANAGED_BY = {"app.kubernetes.io/managed-by": "qfleet", "app.kubernetes.io/part-of": "qfleet"}


def child_name(model: str, *parts: str) -> str:
    """`<model>-<parts...>`, cut to 63 characters; a cut model name gets 5 hex digits of its hash to stay unique."""
    suffix = "-".join(parts)
    full = f"{model}-{suffix}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(model.encode()).hexdigest()[:5]
    room = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{model[:room].rstrip('-')}-{digest}-{suffix}"


def owner_reference(name: str, uid: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}
