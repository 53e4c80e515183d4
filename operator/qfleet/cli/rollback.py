"""`kubectl qfleet rollback NAME --to REVISION`: the spec edit that names an earlier revision again.

Pure: from the QuantizedModel as read, the merge patch that writes the revision's artifact fields (recorded in its
`status.history[].artifact`) back into the spec, checked by recomputing the revision before anything is sent. The
revision then comes back the way every revision does: its Jobs are found done, and it canaries through the steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qfleet.api import SpecError, parse_spec
from qfleet.revision import revision_of

SECTIONS = ("quantization", "engine")
"""Spec sections the artifact fields own entirely (anything else in them is cleared)."""


class RollbackRefused(ValueError):
    pass


def merge_patch_to(current: Any, target: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `current` into `target`: changed values, null for removed keys."""
    if not isinstance(current, Mapping) or not isinstance(target, Mapping):
        return target
    patch = {key: None for key in current if key not in target}
    for key, value in target.items():
        if key not in current or current[key] != value:
            patch[key] = merge_patch_to(current.get(key), value)
    return patch


def apply_merge_patch(document: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return patch
    result = dict(document) if isinstance(document, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def rollback_patch(document: Mapping[str, Any], revision: str) -> dict[str, Any]:
    """The merge patch for the model's spec, or RollbackRefused saying why not."""
    name = document.get("metadata", {}).get("name")
    status = document.get("status") or {}
    entries = [h for h in status.get("history") or [] if h.get("revision") == revision]
    if not entries:
        known = ", ".join(dict.fromkeys(h.get("revision") for h in status.get("history") or [])) or "none"
        raise RollbackRefused(f"revision {revision} is not in {name}'s status.history (known: {known})")
    last = entries[-1]
    if last.get("outcome") == "RolledBack":
        raise RollbackRefused(f"revision {revision} was rolled back ({last.get('message')}): name a revision that "
                              "served, or change the spec yourself")
    generation = (last.get("calibration") or {}).get("generation")
    if generation:
        raise RollbackRefused(f"revision {revision} was made by calibration refresh generation {generation}, which is "
                              "not a spec field: no spec edit gives that revision again. Name a revision without a "
                              "refresh, or let the next refresh re-calibrate")
    recorded = next((h.get("artifact") for h in reversed(entries) if h.get("artifact")), None)
    if recorded is None:
        raise RollbackRefused(f"the history of {revision} does not record its spec fields (an entry written by an "
                              "older operator): restore them from Git")
    artifact = json.loads(recorded)
    spec = document.get("spec") or {}
    patch: dict[str, Any] = {
        "model": {key: value for key, value in artifact["model"].items() if (spec.get("model") or {}).get(key)
                  != value},
        "nodePool": {"gpusPerReplica": artifact["nodePool"]["gpusPerReplica"]},
        "runtime": {"env": artifact["runtime"]["env"] or None},
    }
    # Entries written before images were artifact fields hold none: the spec's own images stay.
    if artifact["runtime"].get("image"):
        patch["runtime"]["image"] = artifact["runtime"]["image"]
    if (artifact.get("serving") or {}).get("image"):
        patch["serving"] = {"image": artifact["serving"]["image"]}
    refresh = ((spec.get("quantization") or {}).get("calibration") or {}).get("refresh")
    if refresh is not None:  # policy, not artifact: the spec's own refresh stays
        calibration = artifact["quantization"].setdefault("calibration", {})
        calibration["refresh"] = refresh
    for section in SECTIONS:
        patch[section] = merge_patch_to(spec.get(section) or {}, artifact[section])
    try:
        restored = revision_of(parse_spec(apply_merge_patch(spec, patch)))
    except SpecError as error:
        raise RollbackRefused(f"the recorded fields of {revision} no longer make a valid spec: {error}") from None
    if restored != revision:
        raise RollbackRefused(f"the recorded fields give revision {restored}, not {revision}: restore it from Git")
    return {"spec": patch}
