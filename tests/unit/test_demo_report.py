"""The demo's pure parts: status samples (what the live table and the plots read) and the report's analysis rows."""
from __future__ import annotations

from localfleet.demo import report
from localfleet.demo.story_result import StoryResult
from localfleet.demo.watch import sample_of

ANALYSIS = {"at": "2026-11-24T02:00:00Z", "verdict": "Abort", "requests": 1, "confidence": "0.95",
            "gates": [{"name": "fallbackRate", "value": "1", "lower": "0.7", "upper": "1", "max": "0.1",
                       "verdict": "Abort", "window": "interval", "canarySamples": 9},
                      {"name": "p99LatencyRatio", "value": "1.1", "lower": "0.8", "upper": "+Inf", "max": "2",
                       "verdict": "Inconclusive", "window": "step", "canarySamples": 1, "stableSamples": 40}]}


def model(current: str, canary: dict | None, history: list[dict]) -> dict:
    return {"status": {"phase": "Canary" if canary else "RolledBack",
                       "revision": {"current": current, "stable": "s1", "canary": current if canary else None},
                       "canary": canary, "history": history}}


def test_a_finished_canary_is_read_from_its_own_history_entry_only() -> None:
    ended = sample_of(model("c2", None, [{"revision": "c2", "outcome": "RolledBack", "analysis": ANALYSIS}]), "x", 5)
    assert (ended.verdict, ended.gates["fallbackRate"], ended.bounds["fallbackRate"]) == ("Abort", 1.0, 0.1)
    # The next revision's pipeline: the last entry belongs to the revision before, not to this one.
    next_one = sample_of(model("c3", None, [{"revision": "c2", "outcome": "RolledBack", "analysis": ANALYSIS}]),
                         "y", 6)
    assert next_one.verdict is None and next_one.gates["fallbackRate"] is None


def test_each_interval_is_shown_at_the_weight_it_judged() -> None:
    running = model("c2", {"step": 0, "weight": "1"}, [])
    samples = [sample_of(running, "x", 1),
               sample_of(model("c2", None, [{"revision": "c2", "outcome": "RolledBack", "analysis": ANALYSIS}]),
                         "x", 2)]
    rows = report._analyses(samples)
    assert [(r.weight, r.verdict) for r in rows] == [(1.0, "Abort")]


def test_the_report_is_written_from_the_samples(tmp_path) -> None:
    running = model("c2", {"step": 0, "weight": "1"}, [])
    samples = [sample_of(running, "x", 1),
               sample_of(model("c2", None, [{"revision": "c2", "outcome": "RolledBack", "analysis": ANALYSIS}]),
                         "x", 2)]
    result = StoryResult("x", "a story", started=0, finished=3, passed=True, summary="rolled back",
                         formats={"nvfp4": "failed the evaluation at the default qualityDrop bound 0.01: drop 0.0169"})
    path = report.write(tmp_path, [result], samples, {"c2": {"kvCache": "fp8", "bytesPerToken": 11530.0,
                                                             "requests": 3.0}},
                        {"cpus": "2", "python": "Python 3", "platform": "Linux", "started": "t", "seconds": "3"},
                        passed=True, short=True)
    text = path.read_text()
    assert "| 2 | 1% | Abort | 1 | 1.1 [0.8, +Inf] (max 2); n 1 / 40 | 1 [0.7, 1] (max 0.1); n 9; last interval | " \
        "no data |" in text
    assert "each bound one-sided at 0.95" in text
    # The first paragraph names the gates: the defaults, and the one setting that differs (for a CPU reason).
    first = text.split("\n\n")[1]
    assert first.startswith("Gates: **the defaults**") and first.count("except one setting") == 1
    assert "`p99LatencyRatio` max 2" in first and "qualityDrop max 0.01" in first and "fallbackRate max 0.005" in first
    assert "| nvfp4 | failed the evaluation at the default qualityDrop bound 0.01: drop 0.0169 |" in text
    assert "| c2 | fp8 | 11,530 | 3 |" in text
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("weights.png", "gates.png",
                                                                              "capacity.png"))
