"""The race's results as markdown: one table per phase with both columns and the ratio qfleet / Argo Rollouts, the
qfleet-only figures, the requests by verb and resource, and the growth tables. Pure: plain data in, text out."""
from __future__ import annotations

ROWS = (("wall_s", "wall time (s)"), ("requests", "API requests"), ("reads", "  reads (get, list, watch)"),
        ("gets", "  of which GET"), ("writes", "  writes"),
        ("lease_requests", "leader-election Lease requests (not above)"), ("cpu_s", "controller CPU (s)"),
        ("cpu_share", "  share of one core"), ("peak_rss_mib", "controller peak RSS (MiB)"),
        ("machine_cpu_s", "machine CPU, all processes (core-s)"), ("machine_busy_share", "  share of all cores"))
QFLEET_ROWS = (("visits", "visits"), ("visits_per_s", "visits per second"), ("visits_unchanged", "visits that wrote nothing"),
               ("visit_p50_s", "visit duration p50 (s, bucket bound)"), ("visit_p99_s", "visit duration p99 (s, bucket bound)"),
               ("wakeup_lag_p99_s", "wake-up lag p99 (s, bucket bound)"),
               ("wakeup_lag_scheduled_p99_s", "  of scheduled wake-ups (a due time came)"),
               ("wakeup_lag_event_p99_s", "  of event wake-ups (woken at once)"))


def ratio(ours, theirs) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
        return "-"
    if theirs == 0:
        return "-" if ours == 0 else "inf"
    return f"{ours / theirs:.2f}x"


def _cell(value) -> str:
    return "-" if value is None else str(value)


def phase_table(name: str, ours: dict | None, theirs: dict | None) -> list[str]:
    lines = [f"### Phase {name}", "", "| | qfleet | Argo Rollouts | qfleet / Argo |", "|---|---:|---:|---:|"]
    for key, label in ROWS:
        a, b = (ours or {}).get(key), (theirs or {}).get(key)
        lines.append(f"| {label} | {_cell(a)} | {_cell(b)} | {ratio(a, b)} |")
    for key, label in QFLEET_ROWS:
        if ours and key in ours:
            lines.append(f"| {label} | {_cell(ours[key])} | n/a | |")
    return lines + [""]


def verbs_table(phases: dict[str, dict[str, dict]]) -> list[str]:
    """phases: phase -> leg -> {"verb resource": n}."""
    lines = ["### Requests by verb and resource", "", "| phase | verb resource | qfleet | Argo Rollouts |",
             "|---|---|---:|---:|"]
    for phase, legs in phases.items():
        keys = sorted(set().union(*(set(v) for v in legs.values())) if legs else set())
        for key in keys:
            cells = [str(legs[leg].get(key, 0)) if leg in legs else "-" for leg in ("qfleet", "argo")]
            lines.append(f"| {phase} | {key} | {' | '.join(cells)} |")
    return lines + [""]


def processes_table(columns: dict[str, dict[str, float]], least: float = 1.0) -> list[str]:
    """columns: "leg: phase" -> process name -> CPU seconds over the phase. A process under `least` seconds in every
    column is summed into "others"."""
    if not columns:
        return []
    names = sorted({n for c in columns.values() for n, s in c.items() if s >= least},
                   key=lambda n: -max(c.get(n, 0.0) for c in columns.values()))
    lines = ["### Machine CPU by process (core-s)", "", "| process | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{c.get(name, 0.0):.1f}" for c in columns.values()) + " |")
    others = [sum(s for n, s in c.items() if n not in names) for c in columns.values()]
    lines.append("| others | " + " | ".join(f"{s:.1f}" for s in others) + " |")
    lines.append("| all | " + " | ".join(f"{sum(c.values()):.1f}" for c in columns.values()) + " |")
    return lines + [""]


def growth_table(title: str, rows: list[dict]) -> list[str]:
    """rows: {"models", "nodes", "phase1_s", "phase2_s", "phase2_requests_per_model", "phase2_cpu_ms_per_model",
    "visit_p50_s", "quiet_cpu_share", "peak_rss_mib"}."""
    lines = [f"### {title}", "", "| models | nodes | phase 1 (s) | phase 2 (s) | phase 2 requests / model | "
             "phase 2 CPU ms / model | visit p50 (s) | quiet CPU share | peak RSS (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['models']} | {r['nodes']} | {r['phase1_s']} | {r['phase2_s']} | "
                     f"{r['phase2_requests_per_model']} | {r['phase2_cpu_ms_per_model']} | {_cell(r['visit_p50_s'])} | "
                     f"{r['quiet_cpu_share']} | {r['peak_rss_mib']} |")
    return lines + [""]


def growth_row(models: int, nodes: int, phases: list[dict]) -> dict:
    one, two, quiet = phases
    return {"models": models, "nodes": nodes, "phase1_s": one["wall_s"], "phase2_s": two["wall_s"],
            "phase2_requests_per_model": round(two["requests"] / models, 1),
            "phase2_cpu_ms_per_model": round(1000 * two["cpu_s"] / models, 1), "visit_p50_s": two.get("visit_p50_s"),
            "quiet_cpu_share": quiet["cpu_share"], "peak_rss_mib": quiet["peak_rss_mib"]}


def document(header: dict, legs: dict[str, list[dict]], verbs: dict[str, dict[str, dict]],
             growth: dict[str, list[dict]], processes: dict[str, dict[str, float]] | None = None) -> str:
    lines = [f"# make bench: {header['date']} (N = {header['models']}, NODES = {header['nodes']})", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key not in ("date",)]
    lines.append("")
    qfleet, argo = legs.get("qfleet") or [], legs.get("argo") or []
    names = [p["name"] for p in (qfleet or argo)]
    for index, name in enumerate(names):
        lines += phase_table(name, qfleet[index] if index < len(qfleet) else None,
                             argo[index] if index < len(argo) else None)
    lines += verbs_table(verbs)
    lines += processes_table(processes or {})
    for title, rows in growth.items():
        if rows:
            lines += growth_table(title, rows)
    return "\n".join(lines)
