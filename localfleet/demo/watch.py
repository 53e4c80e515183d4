"""The live rollout table: a QuantizedModel's status sampled once a second while a story runs.

The samples are the report's time series (weights and gate values over time); a row is printed whenever something a
person would notice changes: phase, revisions, weight, a new analysis.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from qfleet.api import GROUP, PLURAL, VERSION

GATES = ("p99LatencyRatio", "fallbackRate", "qualityDrop")
SAMPLE_SECONDS = 1.0


class StoryFailed(AssertionError):
    pass


@dataclass(frozen=True)
class Sample:
    t: float
    """Seconds since the demo started."""
    story: str
    phase: str | None
    stable: str | None
    canary: str | None
    weight: float | None
    """The canary's traffic percent as status reports it (None: no canary)."""
    verdict: str | None
    analysis_at: str | None
    requests: int | None
    gates: Mapping[str, float | None] = field(default_factory=dict)
    bounds: Mapping[str, float | None] = field(default_factory=dict)
    intervals: Mapping[str, tuple[float | None, float | None] | None] = field(default_factory=dict)
    """Each gate's (lower, upper) confidence bounds; None for a gate judged on its value alone."""
    samples: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    """Each gate's (canary, stable) sample sizes."""
    windows: Mapping[str, str | None] = field(default_factory=dict)
    """What each gate's verdict rests on: step or interval."""
    confidence: str | None = None


def _number(value: Any) -> float | None:
    """A decimal string as a float ("+Inf", the bound the data cannot give, is infinity)."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def sample_of(document: Mapping[str, Any], story: str, t: float) -> Sample:
    status = document.get("status") or {}
    revision = status.get("revision") or {}
    canary = status.get("canary") or {}
    analysis = canary.get("lastAnalysis") or {}
    if not canary and status.get("history") and status["history"][-1].get("revision") == revision.get("current"):
        # A promotion or a rollback of the current revision ended the canary status; its deciding interval is in
        # that revision's history entry (an older entry belongs to the story before).
        analysis = status["history"][-1].get("analysis") or {}
    gates = {g["name"]: g for g in analysis.get("gates") or []}
    return Sample(t=round(t, 1), story=story, phase=status.get("phase"), stable=revision.get("stable"),
                  canary=revision.get("canary"), weight=_number(canary.get("weight")) if canary else None,
                  verdict=analysis.get("verdict"), analysis_at=analysis.get("at"), requests=analysis.get("requests"),
                  gates={name: _number(gates.get(name, {}).get("value")) for name in GATES},
                  bounds={name: _number(gates.get(name, {}).get("max")) for name in GATES},
                  intervals={name: _interval(gates.get(name, {})) for name in GATES},
                  samples={name: (gates.get(name, {}).get("canarySamples"), gates.get(name, {}).get("stableSamples"))
                           for name in GATES},
                  windows={name: gates.get(name, {}).get("window") for name in GATES},
                  confidence=analysis.get("confidence"))


def _interval(gate: Mapping[str, Any]) -> tuple[float | None, float | None] | None:
    if "lower" not in gate or "upper" not in gate:
        return None
    return _number(gate["lower"]), _number(gate["upper"])


def condition(document: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in (document.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


class Recorder:
    def __init__(self, objects: k8s.CustomObjectsApi, namespace: str, started: float, out: Callable = print):
        self.objects, self.namespace, self.started, self.out = objects, namespace, started, out
        self.samples: list[Sample] = []
        self._last_row: tuple | None = None
        self._header_printed = False

    def now(self) -> float:
        return time.monotonic() - self.started

    def read(self, name: str) -> dict:
        return self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def follow(self, name: str, story: str, done: Callable[[dict], bool], timeout: float,
               what: str) -> dict:
        """Samples the model every second until done(document) or the timeout (StoryFailed, with the status)."""
        deadline = time.monotonic() + timeout
        while True:
            document = self.read(name)
            self.record(document, story)
            if done(document):
                return document
            if time.monotonic() > deadline:
                raise StoryFailed(f"{what}: not after {timeout:.0f} s; status: {document.get('status')}")
            time.sleep(SAMPLE_SECONDS)

    def record(self, document: Mapping[str, Any], story: str) -> Sample:
        sample = sample_of(document, story, self.now())
        self.samples.append(sample)
        latest = _latest_condition(document)
        row = (sample.phase, sample.stable, sample.canary, sample.weight, sample.analysis_at,
               latest.get("type"), latest.get("reason"))
        if row != self._last_row:
            self._last_row = row
            ready = condition(document, "Ready")
            shown = condition(document, "CanaryHealthy") if sample.canary else \
                ready if ready.get("status") == "True" else latest
            self._print(sample, f"{shown.get('type', '')} {shown.get('reason', '')}: "
                                f"{shown.get('message', '')}".strip(": "))
        return sample

    def _print(self, sample: Sample, message: str) -> None:
        if not self._header_printed:
            self._header_printed = True
            self.out(f"  {'time':>6}  {'phase':<12} {'stable':<10} {'canary':<10} {'weight':>6}  "
                     f"{'p99x':>6} {'fallback':>8} {'qdrop':>7}  {'verdict':<12} {'req':>4}  message")
        minutes, seconds = divmod(int(sample.t), 60)
        gates = [_show(sample.gates.get(name)) for name in GATES]
        weight = "-" if sample.weight is None else f"{sample.weight:g}%"
        self.out(f"  {minutes:>3}:{seconds:02d}  {sample.phase or '-':<12} {sample.stable or '-':<10} "
                 f"{sample.canary or '-':<10} {weight:>6}  {gates[0]:>6} {gates[1]:>8} {gates[2]:>7}  "
                 f"{sample.verdict or '-':<12} {sample.requests if sample.requests is not None else '-':>4}  "
                 f"{message[:90]}")


def _latest_condition(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The condition that changed last (ties: the later in the list): what the operator is doing now."""
    conditions = [c for c in (document.get("status") or {}).get("conditions") or []
                  if c.get("reason") != "Reconciling"]  # the placeholder every condition starts with
    return max(reversed(conditions), key=lambda c: c.get("lastTransitionTime") or "", default={})


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
