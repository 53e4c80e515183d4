"""The two figures of `make bench-runtime`, from its JSON: hit rate vs budget and TTFT vs budget, one line per format.

    .venv/bin/python benchmarks/runtime/plot.py [--results benchmarks/results]

Runs in the operator's venv (matplotlib comes with its `demo` extra; the runtime venv does not need it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STYLE = {"bf16": ("tab:gray", "o"), "fp8": ("tab:blue", "s"), "int8": ("tab:green", "^"),
         "nvfp4": ("tab:red", "D"), "nvfp4-fb": ("tab:orange", "v")}
HIT_LINE = {"int8": ":"}
"""INT8 stores as many bytes per token as FP8, so its hit-rate line lies on FP8's: dotted, to show both."""


def series(result: dict, variant: str, key: str) -> tuple[list[float], list[float]]:
    rows = sorted((r for r in result["runs"] if r["variant"] == variant), key=lambda r: r["budgetBytes"])
    return [r["budgetBytes"] / 2**20 for r in rows], [r[key] for r in rows]


def budget_axis(ax, result: dict) -> None:
    budgets = sorted({r["budgetBytes"] / 2**20 for r in result["runs"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [f"{b:.1f}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("prefix-cache budget (MiB of KV cache, from the planner)")


def caption(result: dict) -> str:
    src, host, info = result["source"], result["machine"], result["stream"]
    return (f"SmolLM2-135M on CPU ({host['cores']} cores), {info['requests']} requests, "
            f"{info['promptTokens']:,} prompt tokens; commit {src['commit'][:10]}")


def plot_hit_rate(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for variant in result["variants"]:
        x, y = series(result, variant["name"], "hitRate")
        color, marker = STYLE.get(variant["name"], (None, "o"))
        ax.plot(x, [v * 100 for v in y], marker=marker, color=color, label=variant["label"],
                linestyle=HIT_LINE.get(variant["name"], "-"), markerfacecolor="none" if variant["name"] == "int8"
                else color)
    ax.axhline(result["stream"]["idealHitRate"] * 100, color="black", linestyle=":", linewidth=1,
               label="unbounded cache")
    budget_axis(ax, result)
    ax.set_ylabel("hit rate (% of prompt tokens from the cache)")
    ax.set_title("Prefix-cache hit rate by KV format at the same memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, caption(result), fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ttft(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for variant in result["variants"]:
        color, marker = STYLE.get(variant["name"], (None, "o"))
        x, p50 = series(result, variant["name"], "ttftP50")
        _, p99 = series(result, variant["name"], "ttftP99")
        ax.plot(x, [v * 1e3 for v in p50], marker=marker, color=color, label=f"{variant['label']} p50")
        ax.plot(x, [v * 1e3 for v in p99], color=color, linestyle="--", linewidth=0.8, alpha=0.7)
    budget_axis(ax, result)
    ax.set_ylabel("time to first token (ms); dashed: p99")
    ax.set_title("TTFT by KV format at the same memory (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, caption(result), fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    result = json.loads((results / "runtime.json").read_text())
    plot_hit_rate(result, results / "runtime-hit-rate.png")
    plot_ttft(result, results / "runtime-ttft.png")
    print(f"wrote {results / 'runtime-hit-rate.png'} and {results / 'runtime-ttft.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
