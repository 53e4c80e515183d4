"""`demo-report/`: what the demo did, in markdown and three PNG plots, every number from this run.

- `weights.png`: the canary's traffic weight over time, one line per story that ran a canary;
- `gates.png`: each gate's value at every analysis, with the bound it had to stay under;
- `capacity.png`: tokens per replica by KV format from the planner (Llama 3.3 70B on one 8-GPU H100 and B200
  replica), beside the KV bytes per token the demo's servers measured and reported to Prometheus.
"""
from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from localfleet.demo.manifests import CPU_SETTING, GATES as DEMO_GATES  # noqa: E402
from localfleet.demo.story_result import StoryResult  # noqa: E402
from localfleet.demo.watch import GATES, Sample  # noqa: E402
from qfleet.capacity import plan_capacity  # noqa: E402
from qfleet.formats import weight_format  # noqa: E402
from qfleet.gpus import GPUS  # noqa: E402
from qfleet.shapes import known_shape  # noqa: E402

CAPACITY_MODEL = "hf://meta-llama/Llama-3.3-70B-Instruct"
CAPACITY_GPUS = ("H100", "B200")


def capacity_rows() -> list[dict]:
    """The planner's answer per GPU and KV format for the auto story's model, one 8-GPU replica, BF16 weights."""
    shape = known_shape(CAPACITY_MODEL)
    rows = []
    for gpu in CAPACITY_GPUS:
        plan = plan_capacity(shape, GPUS[gpu], weight_format("bf16"), gpus_per_replica=8)
        for row in plan.formats:
            rows.append({"gpu": gpu, "kvCache": row.kv_format.name, "bytesPerToken": float(row.kv_bytes_per_token),
                         "tokensPerReplica": row.tokens_per_replica if row.runs_on_gpu else 0,
                         "runs": row.runs_on_gpu})
    return rows


def write(directory: Path, results: Sequence[StoryResult], samples: Sequence[Sample], measured: dict[str, dict],
          machine: dict[str, str], passed: bool, short: bool) -> Path:
    """Writes the report and returns the markdown file's path. `measured` maps a revision to what Prometheus had
    for it (kvCache, bytesPerToken, requests)."""
    directory.mkdir(parents=True, exist_ok=True)
    capacity = capacity_rows()
    _plot_weights(directory / "weights.png", results, samples)
    _plot_gates(directory / "gates.png", results, samples)
    _plot_capacity(directory / "capacity.png", capacity, measured)
    markdown = directory / "README.md"
    markdown.write_text(_markdown(results, samples, capacity, measured, machine, passed, short))
    return markdown


def _story_samples(samples: Sequence[Sample], key: str) -> list[Sample]:
    return [s for s in samples if s.story == key]


def _canary_stories(results: Sequence[StoryResult], samples: Sequence[Sample]) -> list[StoryResult]:
    return [r for r in results if any(s.weight is not None for s in _story_samples(samples, r.key))]


def _plot_weights(path: Path, results: Sequence[StoryResult], samples: Sequence[Sample]) -> None:
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for result in _canary_stories(results, samples):
        points = [(s.t, s.weight or 0.0) for s in _story_samples(samples, result.key)
                  if s.canary is not None or s.weight is not None]
        if points:
            axis.step([p[0] for p in points], [p[1] for p in points], where="post", label=result.key)
    axis.set_xlabel("seconds since the demo started")
    axis.set_ylabel("canary weight (%)")
    axis.set_yscale("symlog", linthresh=1)
    axis.set_title("Traffic weight of each canary")
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _analyses(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per analysis (the first that shows it), with the weight the canary had during that interval:
    the sample before it (an interval that passes a step shows the next step's weight already)."""
    seen, out = set(), []
    previous: Sample | None = None
    for sample in samples:
        if sample.analysis_at and (sample.story, sample.analysis_at) not in seen:
            seen.add((sample.story, sample.analysis_at))
            during = previous.weight if previous is not None and previous.story == sample.story else sample.weight
            out.append(replace(sample, weight=during))
        previous = sample
    return out


def _plot_gates(path: Path, results: Sequence[StoryResult], samples: Sequence[Sample]) -> None:
    analyses = _analyses(samples)
    figure, axes = plt.subplots(1, len(GATES), figsize=(12, 3.5))
    for axis, gate in zip(axes, GATES, strict=True):
        for result in _canary_stories(results, samples):
            points = [(s.t, s.gates.get(gate)) for s in analyses if s.story == result.key
                      and s.gates.get(gate) is not None]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=result.key)
            bounds = {s.bounds.get(gate) for s in analyses if s.story == result.key} - {None}
            for bound in bounds:
                axis.axhline(bound, linestyle="--", color="grey", linewidth=1)
        axis.set_title(f"{gate} (dashed: bound)")
        axis.set_xlabel("seconds")
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_capacity(path: Path, capacity: list[dict], measured: dict[str, dict]) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    formats = sorted({r["kvCache"] for r in capacity}, key=lambda f: -max(
        r["bytesPerToken"] for r in capacity if r["kvCache"] == f))
    width = 0.8 / len(CAPACITY_GPUS)
    for index, gpu in enumerate(CAPACITY_GPUS):
        values = [next(r["tokensPerReplica"] for r in capacity if r["gpu"] == gpu and r["kvCache"] == f) / 1e6
                  for f in formats]
        left.bar([i + index * width for i in range(len(formats))], values, width, label=f"8x {gpu}")
    left.set_xticks([i + width / 2 for i in range(len(formats))], formats)
    left.set_ylabel("KV tokens per replica (millions)")
    left.set_title("Planner: Llama 3.3 70B, BF16 weights (0 = the GPU cannot run it)")
    left.legend()
    served = sorted(measured.items(), key=lambda item: -(item[1].get("bytesPerToken") or 0))
    right.bar([f"{m['kvCache']}\n{revision}" for revision, m in served],
              [m.get("bytesPerToken") or 0 for _, m in served], color="tab:green")
    right.set_ylabel("KV bytes per token")
    right.set_title("Measured by the demo's servers (SmolLM2-135M)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _markdown(results: Sequence[StoryResult], samples: Sequence[Sample], capacity: list[dict],
              measured: dict[str, dict], machine: dict[str, str], passed: bool, short: bool) -> str:
    cpu = DEMO_GATES[CPU_SETTING]
    lines = [f"# qfleet demo report ({'short variant' if short else 'full'})", "",
             f"Gates: **the defaults** (fallbackRate max 0.005; qualityDrop max 0.01, abortAbove 0.01; their "
             f"minSamples), except one setting for a CPU reason: `{CPU_SETTING}` max {cpu['max']}, abortAbove "
             f"{cpu['abortAbove']}, minSamples {cpu['minSamples']} (default 1.2 / 1.5 / 500): two CPU servers share "
             "two cores with the traffic and the live-quality rescoring, and NVFP4's packing costs about 1.3x on CPU "
             "where a GPU kernel does not. Steps, pauses and intervals are seconds, not the runbook's hours.", "",
             f"Outcome: **{'every story passed' if passed else 'a story FAILED'}**. "
             f"Machine: {machine.get('cpus')} CPUs, {machine.get('python')}, {machine.get('platform')}; "
             f"started {machine.get('started')}, {machine.get('seconds')} s in all.", "",
             "Model: SmolLM2-135M-Instruct, served by real Triton (`qfleet-runtime serve`) on the local fleet's "
             "executor node; traffic through Traefik by the HTTPRoute's weights; gates read from the fleet's "
             "Prometheus. Plots: [weights.png](weights.png), [gates.png](gates.png), "
             "[capacity.png](capacity.png).", ""]
    formats = [(name, text) for result in results for name, text in result.formats.items()]
    if formats:
        lines += ["## Formats on the default gates", "", "| KV format | outcome and why |", "|---|---|"]
        lines += [f"| {name} | {text} |" for name, text in formats]
        lines.append("")
    lines += ["## Stories", ""]
    for index, result in enumerate(results, 1):
        seconds = (result.finished or result.started) - result.started
        lines += [f"### {index}. {result.title}", "",
                  f"{'passed' if result.passed else 'FAILED'} in {seconds:.0f} s: {result.summary}", ""]
        for key, value in result.facts.items():
            lines.append(f"- {key}: {value}")
        if result.traffic:
            t = result.traffic
            p50 = f"{t['p50']:.2f} s" if t["p50"] is not None else "-"
            p99 = f"{t['p99']:.2f} s" if t["p99"] is not None else "-"
            lines.append(f"- traffic ({t['from']:.0f}-{t['to']:.0f} s): {t['sent']} requests, {t['failed']} failed, "
                         f"client p50 {p50}, p99 {p99}")
        analyses = [s for s in _analyses(samples) if s.story == result.key]
        if analyses:
            confidence = next((s.confidence for s in analyses if s.confidence), None)
            lines += ["", "Each analysis judged every gate on the evidence since its step started (an abort also on "
                      "the last interval alone, marked 'last interval'): the value, its confidence interval "
                      f"(each bound one-sided at {confidence or 'the spec confidence'}), its bound, and the canary "
                      "and stable sample sizes it rests on (requests; KV tokens for the fallback rate; the "
                      "canary's scored prompt tokens for quality).", "",
                      "| t (s) | weight | verdict | canary requests | " + " | ".join(GATES) + " |",
                      "|---|---|---|---|" + "---|" * len(GATES)]
            for s in analyses:
                gates = " | ".join(_cell(s.gates.get(g), s.bounds.get(g), s.intervals.get(g), s.samples.get(g),
                                         s.windows.get(g)) for g in GATES)
                weight = "-" if s.weight is None else f"{s.weight:g}%"
                lines.append(f"| {s.t:.0f} | {weight} | {s.verdict} | {s.requests} | {gates} |")
        lines.append("")
    lines += ["## Capacity by KV format", "",
              "The planner (`qfleet plan`) for one replica of Llama 3.3 70B with BF16 weights on 8 GPUs "
              "(KV tokens per replica; NVFP4 needs compute capability 10, so H100 gets none):", "",
              "| GPU | KV format | KV bytes/token | tokens per replica |", "|---|---|---|---|"]
    for row in capacity:
        lines.append(f"| {row['gpu']} | {row['kvCache']} | {row['bytesPerToken']:,.0f} | "
                     f"{row['tokensPerReplica']:,} |")
    if measured:
        lines += ["", "What the demo's servers stored per token (`qfleet_kv_bytes_per_token`, scales and BF16 "
                  "fallback copies included) and served (`qfleet_requests_total`):", "",
                  "| revision | KV format | KV bytes/token | requests |", "|---|---|---|---|"]
        for revision, m in measured.items():
            lines.append(f"| {revision} | {m.get('kvCache')} | {_fmt(m.get('bytesPerToken'))} | "
                         f"{_fmt(m.get('requests'))} |")
    lines += ["", "## Raw samples", "",
              f"{len(samples)} status samples (one a second) are in `samples.jsonl`.", ""]
    return "\n".join(lines)


def _cell(value: float | None, bound: float | None, interval: tuple | None = None,
          samples: tuple[int | None, int | None] | None = None, window: str | None = None) -> str:
    canary, stable = samples or (None, None)
    sizes = "" if canary is None else f"; n {canary:,}" + ("" if stable is None else f" / {stable:,}")
    if value is None:
        return "no data" + sizes
    shown = f"{value:.4g}"
    if interval is not None and None not in interval:
        shown += " [" + ", ".join("+Inf" if b == math.inf else f"{b:.4g}" for b in interval) + "]"
    if bound is not None:
        shown += f" (max {bound:g})"
    return shown + sizes + ("; last interval" if window == "interval" else "")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def write_samples(directory: Path, samples: Sequence[Sample]) -> None:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "samples.jsonl", "w") as out:
        for sample in samples:
            out.write(json.dumps(asdict(sample)) + "\n")


def machine_facts() -> dict[str, str]:
    import os
    import sys

    return {"cpus": str(os.cpu_count()), "python": f"Python {sys.version.split()[0]}",
            "platform": platform.platform(terse=True)}
