"""`kubectl qfleet status`: a QuantizedModel's status as a timeline a person can read (pure: a document in, text out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from qfleet.api.conditions import CALIBRATION_STALE, ConditionType

CONDITION_ORDER: tuple[str, ...] = (
    ConditionType.CALIBRATED,
    ConditionType.ENGINE_BUILT,
    ConditionType.EVALUATED,
    ConditionType.CANARY_HEALTHY,
    ConditionType.ROLLED_BACK,
    CALIBRATION_STALE,
    ConditionType.READY,
)
"""The pipeline's order: the three artifact steps, the canary, then the summary."""

NONE = "-"


def ordered_conditions(conditions: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Known types in pipeline order, then any other type in the order the status lists them."""
    rank = {kind: index for index, kind in enumerate(CONDITION_ORDER)}
    return sorted(conditions, key=lambda c: rank.get(c.get("type", ""), len(rank)))


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _fields(pairs: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"{label} {value}" for label, value in pairs if value not in (None, "", []))


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _analysis(analysis: Mapping[str, Any]) -> list[str]:
    """The last analysis: its window and confidence, then each gate's value, interval, bound and evidence."""
    confidence = analysis.get("confidence")
    lines = ["  last analysis " + _fields([
        ("at", analysis.get("at")), ("since", analysis.get("since")), ("verdict", analysis.get("verdict")),
        ("canary requests", _number(analysis["requests"]) if "requests" in analysis else None),
        ("confidence", confidence)])]
    gates = analysis.get("gates") or []
    if gates:
        lines += _table([("GATE", "VALUE", f"INTERVAL ({confidence or NONE} each side)", "BOUND", "CANARY", "STABLE",
                          "NEEDS", "WINDOW", "VERDICT")] + [
            (g.get("name", NONE), g.get("value") or "no data",
             f"[{g['lower']}, {g['upper']}]" if "lower" in g and "upper" in g else NONE,
             g.get("max") or NONE, *(_number(g[k]) if k in g else NONE for k in ("canarySamples", "stableSamples",
                                                                                  "minSamples")),
             g.get("window") or NONE, g.get("verdict", NONE)) for g in gates], indent="    ")
    return lines


def age(since: str | None, now: datetime | None) -> str | None:
    """How long ago an RFC 3339 time was, in days, hours and minutes ("2d3h", "55m"); None without a clock."""
    if since is None or now is None:
        return None
    try:
        seconds = int((now - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds())
    except (TypeError, ValueError):
        return None
    days, rest = divmod(max(0, seconds), 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes and not days else ""]
    return "".join(parts) or "0m"


def _data(calibration: Mapping[str, Any]) -> str | None:
    """What the calibration ran on: the dataset, and with a recent traffic sample the mix of the two."""
    dataset = calibration.get("dataset")
    mix = calibration.get("datasetMix") or {}
    if not mix.get("recent"):
        return dataset
    return f"{_number(mix.get('configured', 0))} from {dataset or 'the dataset'} + {_number(mix['recent'])} " \
           "from recent traffic"


def _refresh(refresh: Mapping[str, Any]) -> list[str]:
    """The calibration refresh: its generation and last attempt, then the stable revision's drift figures."""
    lines = ["", "Calibration refresh", "  " + _fields([
        ("generation", refresh.get("generation")), ("reason", refresh.get("reason")),
        ("outcome", refresh.get("outcome")), ("revision", refresh.get("revision")),
        ("based on", refresh.get("basedOn")), ("requested", refresh.get("requestedAt")),
        ("failures in a row", refresh.get("consecutiveFailures") or None),
        ("not before", refresh.get("notBefore")), ("next scheduled", refresh.get("nextScheduledAt")),
        ("last drift check", refresh.get("lastCheckedAt"))])]
    drift = refresh.get("drift") or []
    if drift:
        lines += _table([("TRIGGER", "VALUE", "MAX", "FOR", "SAMPLES", "ABOVE SINCE")] + [
            (f.get("name", NONE), f.get("value") or "no data", f.get("max", NONE), f.get("for") or NONE,
             _number(f["samples"]) if "samples" in f else NONE, f.get("aboveSince") or NONE) for f in drift])
    return lines


def render_status(document: Mapping[str, Any], now: datetime | None = None) -> str:
    """The whole timeline: header, conditions in pipeline order, then each result the status holds; `now` gives
    the calibration its age."""
    meta, spec = document.get("metadata", {}), document.get("spec", {})
    status = document.get("status") or {}
    quantization = spec.get("quantization", {})
    lines = [
        f"QuantizedModel {meta.get('namespace', NONE)}/{meta.get('name', NONE)}",
        f"  Phase       {status.get('phase', 'Pending')}"
        f"   (generation {meta.get('generation', NONE)}, observed {status.get('observedGeneration', NONE)})",
        f"  Model       {spec.get('model', {}).get('uri', NONE)}",
        f"  Requested   weights {quantization.get('weights', NONE)}, KV cache {quantization.get('kvCache', NONE)}",
    ]
    revision = status.get("revision") or {}
    if revision:
        lines.append("  Revision    " + _fields([("current", revision.get("current")), ("stable", revision.get("stable")),
                                                  ("canary", revision.get("canary"))]))
    if meta.get("generation") is not None and status.get("observedGeneration") is not None \
            and status["observedGeneration"] < meta["generation"]:
        lines.append("  Note        the operator has not yet observed the latest spec")

    conditions = ordered_conditions(status.get("conditions") or [])
    lines += ["", "Conditions"]
    if conditions:
        rows = [("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE")]
        rows += [(c.get("type", NONE), c.get("status", NONE), c.get("reason", NONE),
                  c.get("lastTransitionTime", NONE), c.get("message") or "") for c in conditions]
        lines += _table(rows)
    else:
        lines.append("  none yet: the operator has not visited this QuantizedModel")

    capacity = status.get("capacity")
    if capacity:
        lines += ["", "Capacity"]
        lines.append("  " + _fields([
            ("GPU", capacity.get("gpu")), ("compute capability", capacity.get("computeCapability")),
            ("KV", capacity.get("kvCache")),
            ("bytes/token", _number(capacity["kvBytesPerToken"]) if "kvBytesPerToken" in capacity else None),
            ("tokens/replica",
             _number(capacity["maxTokensPerReplica"]) if "maxTokensPerReplica" in capacity else None),
            ("sequences/replica",
             _number(capacity["sequencesPerReplica"]) if "sequencesPerReplica" in capacity else None)]))
        if capacity.get("message"):
            lines.append(f"  {capacity['message']}")

    ladder = status.get("ladder")
    if ladder:
        lines += ["", "KV-cache ladder"]
        lines += _table([("FORMAT", "OUTCOME", "MESSAGE")] +
                        [(e.get("kvCache", NONE), e.get("outcome", NONE), e.get("message") or "") for e in ladder])

    calibration = status.get("calibration")
    if calibration:
        report = calibration.get("report") or {}
        fallback = report.get("fallbackLayers")
        lines += ["", "Calibration"]
        lines.append("  " + _fields([
            ("job", calibration.get("job")), ("data", _data(calibration)),
            ("samples", calibration.get("samples")), ("device", calibration.get("device")),
            ("ModelOpt", calibration.get("modelOptVersion")), ("completed", calibration.get("completedAt")),
            ("age", age(calibration.get("completedAt"), now)), ("generation", calibration.get("generation")),
            ("refresh reason", calibration.get("refreshReason"))]))
        if report:
            lines.append("  " + _fields([
                ("KV format", report.get("kvFormat")), ("worst layer", report.get("worstLayer")),
                ("KL", report.get("worstLayerKL")),
                ("fallback layers", ", ".join(str(i) for i in fallback) if fallback else None)]))

    refresh = status.get("refresh")
    if refresh:
        lines += _refresh(refresh)

    engine = status.get("engine")
    if engine:
        lines += ["", "Engine"]
        lines.append("  " + _fields([
            ("job", engine.get("job")), ("KV dtype", engine.get("kvCacheDtype")),
            ("compute capability", engine.get("computeCapability")), ("built", engine.get("builtAt"))]))
        if engine.get("artifact"):
            lines.append(f"  artifact {engine['artifact']}")

    evaluation = status.get("evaluation")
    if evaluation:
        passed = evaluation.get("passed")
        lines += ["", "Evaluation"]
        lines.append("  " + _fields([
            ("job", evaluation.get("job")), ("score", evaluation.get("score")),
            ("baseline", evaluation.get("baselineScore")), ("quality drop", evaluation.get("qualityDrop")),
            ("result", None if passed is None else ("passed" if passed else "failed")),
            ("completed", evaluation.get("completedAt"))]))

    canary = status.get("canary")
    if canary:
        lines += ["", "Canary"]
        lines.append("  " + _fields([
            ("step", canary.get("step")), ("weight", f"{canary.get('weight')}%"),
            ("since", canary.get("stepStartedAt")), ("failures", canary.get("consecutiveFailures")),
            ("inconclusive", canary.get("consecutiveInconclusive"))]))
        analysis = canary.get("lastAnalysis")
        if analysis:
            lines += _analysis(analysis)

    history = status.get("history")
    lines += ["", "History"]
    if history:
        lines += _table([("AT", "REVISION", "KV", "OUTCOME", "WHY")] + [
            (h.get("at", NONE), h.get("revision", NONE), h.get("kvCache") or NONE, h.get("outcome", NONE),
             ": ".join(part for part in (h.get("reason"), h.get("message")) if part)) for h in history])
    else:
        lines.append("  no revision has left a canary yet")
    return "\n".join(lines) + "\n"
