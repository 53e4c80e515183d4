"""The figures of `make bench-runtime` from its results: NVFP4-against-FP8 ratios, the CSV and the markdown summary
that docs/performance.md copies (`bench.py --summary-only` rewrites them from runtime.json)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NVFP4 (both variants) against FP8 at every budget: hit rate ratio and difference, FP8 TTFT / NVFP4 TTFT."""
    by = {(r["budgetMiB"], r["variant"]): r for r in runs}
    rows = []
    for budget in sorted({r["budgetMiB"] for r in runs}):
        fp8 = by[(budget, "fp8")]
        for name in ("nvfp4", "nvfp4-fb"):
            other = by[(budget, name)]
            rows.append({
                "budgetMiB": budget, "variant": name,
                "hitRateRatio": other["hitRate"] / fp8["hitRate"] if fp8["hitRate"] else None,
                "hitRatePoints": (other["hitRate"] - fp8["hitRate"]) * 100,
                "ttftP50Speedup": fp8["ttftP50"] / other["ttftP50"],
                "ttftP99Speedup": fp8["ttftP99"] / other["ttftP99"],
                "computedTokensRatio": fp8["computedTokensPerRequest"] / other["computedTokensPerRequest"],
                "storeTokensRatio": other["storeTokens"] / fp8["storeTokens"] if fp8["storeTokens"] else None,
            })
    return rows


CSV_FIELDS = ("budgetMiB", "budgetBytes", "variant", "kvFormat", "fallbackLayers", "requests", "promptTokens",
              "cachedTokens", "hitRate", "ttftP50", "ttftP99", "ttftMean", "promptTokensPerSecond",
              "computedTokensPerSecond", "computedTokensPerRequest", "storeBlocks", "storeTokens", "storeBytes", "bytesPerCachedToken",
              "plannerTokens", "storeVsPlanner", "evictions", "fallbackTokens", "sequenceBytesPerToken", "seconds")


def write_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in runs:
            writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def summary_markdown(result: dict[str, Any]) -> str:
    """The short summary: the tables docs/performance.md copies."""
    runs, host, src, info = result["runs"], result["machine"], result["source"], result["stream"]
    by = {(r["budgetMiB"], r["variant"]): r for r in runs}
    budgets = sorted({r["budgetMiB"] for r in runs})
    names = [v["name"] for v in result["variants"]]
    lines = [
        "# bench-runtime: prefix-cache hit rate and TTFT by KV format and budget",
        "",
        f"Commit `{src['commit'][:12]}` ({src['subject']})"
        + (", with uncommitted changes in the measured code" if src["uncommittedChangesInMeasuredCode"] else "")
        + f"; {result['date']}; {host['cores']} cores ({host['cpu']}), {host['memoryGiB']} GiB, torch {host['torch']}, "
          f"{result['threads']} threads; wall time {result['timings']['total']:.0f} s.",
        "",
        f"Stream: {info['requests']} requests, {info['promptTokens']:,} prompt tokens (mean {info['promptTokensMean']:.0f}, "
        f"max {info['promptTokensMax']}); unbounded-cache hit rate {_pct(info['idealHitRate'])}. "
        f"One generated token per request.",
        "",
        "## Hit rate (prompt tokens served from the prefix cache / prompt tokens)",
        "",
        "| budget | " + " | ".join(names) + " | NVFP4/FP8 | NVFP4+fb/FP8 |",
        "|---" * (len(names) + 3) + "|",
    ]
    ratio = {(r["budgetMiB"], r["variant"]): r for r in result["ratios"]}

    def hr(b: int, name: str) -> str:
        r = ratio[(b, name)]["hitRateRatio"]
        return ("n/a" if r is None else f"{r:.2f}x") + f" ({ratio[(b, name)]['hitRatePoints']:+.1f} pt)"

    for b in budgets:
        lines.append(f"| {by[(b, 'bf16')]['budgetBytes'] / 2**20:.2f} MiB | "
                     + " | ".join(_pct(by[(b, n)]["hitRate"]) for n in names)
                     + f" | {hr(b, 'nvfp4')} | {hr(b, 'nvfp4-fb')} |")
    lines += ["", "## TTFT p50 / p99 (ms)", "",
              "| budget | " + " | ".join(names) + " | FP8/NVFP4 p50 | FP8/NVFP4+fb p50 |",
              "|---" * (len(names) + 3) + "|"]
    for b in budgets:
        lines.append(f"| {by[(b, 'bf16')]['budgetBytes'] / 2**20:.2f} MiB | "
                     + " | ".join(f"{by[(b, n)]['ttftP50'] * 1e3:.0f} / {by[(b, n)]['ttftP99'] * 1e3:.0f}" for n in names)
                     + f" | {ratio[(b, 'nvfp4')]['ttftP50Speedup']:.2f}x | {ratio[(b, 'nvfp4-fb')]['ttftP50Speedup']:.2f}x |")
    lines += ["", "## Prompt tokens per second (cached ones included)", "",
              "| budget | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for b in budgets:
        lines.append(f"| {by[(b, 'bf16')]['budgetBytes'] / 2**20:.2f} MiB | "
                     + " | ".join(f"{by[(b, n)]['promptTokensPerSecond']:.0f}" for n in names) + " |")
    lines += ["", "## Prompt tokens computed per request (the rest came from the cache)", "",
              "What TTFT pays for in prefill whatever the hardware; FP8/NVFP4 is the recomputation NVFP4 saves.", "",
              "| budget | " + " | ".join(names) + " | FP8/NVFP4 | FP8/NVFP4+fb |", "|---" * (len(names) + 3) + "|"]
    for b in budgets:
        lines.append(f"| {by[(b, 'bf16')]['budgetBytes'] / 2**20:.2f} MiB | "
                     + " | ".join(f"{by[(b, n)]['computedTokensPerRequest']:.0f}" for n in names)
                     + f" | {ratio[(b, 'nvfp4')]['computedTokensRatio']:.2f}x"
                     + f" | {ratio[(b, 'nvfp4-fb')]['computedTokensRatio']:.2f}x |")
    lines += ["", "## The store against the planner", "",
              "Tokens the prefix cache held at the end of the stream / `plan_capacity`'s tokens per replica for the "
              "same KV bytes, where the store was full (it evicted); `-` where everything fitted. The store keeps "
              "whole blocks of 16 tokens and the bf16 copies of fallback entries; the planner knows no fallback layers "
              "(NVFP4+fb is planned as NVFP4).", "",
              "| budget | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for b in budgets:
        cells = []
        for n in names:
            r = by[(b, n)]
            cells.append(f"{r['storeTokens']:,} / {r['plannerTokens']:,} ({r['storeVsPlanner'] * 100:+.2f}%)"
                         if r["evictions"] else "-")
        lines.append(f"| {by[(b, 'bf16')]['budgetBytes'] / 2**20:.2f} MiB | " + " | ".join(cells) + " |")
    lines += ["", "Bytes per cached token, measured from the store (largest budget): "
              + ", ".join(f"{n} {by[(budgets[-1], n)]['bytesPerCachedToken'] or 0:,.0f}" for n in names) + "."]
    lines += ["", "## Quality (the pipeline's evaluation, first "
              f"{result['evaluation']['tokens']} held-out tokens)", "",
              "| variant | qualityDrop | KL (nats/token) | top-1 agreement | perplexity | bf16 layers |",
              "|---|---|---|---|---|---|"]
    for n in names:
        q = result["quality"][n]
        lines.append(f"| {n} | {q['qualityDrop']:+.4f} | {q['kl']:.4f} | {q['top1Agreement']:.3f} | "
                     f"{q['perplexity']:.2f} | {', '.join(map(str, q.get('bf16Layers') or [])) or '-'} |")
    peak = max((r for r in result["ratios"] if r["variant"] == "nvfp4"), key=lambda r: r["hitRatePoints"])
    times = "n/a" if peak["hitRateRatio"] is None else f"{peak['hitRateRatio']:.2f}x"
    lines += ["", f"The NVFP4 hit-rate gain over FP8 peaks at {peak['budgetMiB']} MiB: "
              f"{peak['hitRatePoints']:+.1f} points ({times}), TTFT p50 {peak['ttftP50Speedup']:.2f}x faster.", ""]
    return "\n".join(lines)
