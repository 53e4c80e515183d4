"""The numbers the gates read, pinned: the fallback rate's definition on known tensors, offline and live quality on the
same text, and the request latency's start (arrival, not the start of the work)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from qfleet.api import metrics as contract  # noqa: E402
from qfleet_runtime import engine as eng  # noqa: E402
from qfleet_runtime.serving_metrics import RecordingSink  # noqa: E402
from qfleet_runtime.stored_cache import StoredLayer, WriteLog, build_cache  # noqa: E402

from .conftest import SMOLLM, common, run_cli  # noqa: E402

HEADS, HEAD_DIM = 3, 64


def _tensor(tokens: int, over: list[tuple[int, int]], value: float = 0.5, high: float = 2.0) -> torch.Tensor:
    """(1, heads, tokens, head_dim) of `value`, with one value of `high` in each (head, token) of `over`."""
    x = torch.full((1, HEADS, tokens, HEAD_DIM), value)
    for head, token in over:
        x[0, head, token, 7] = high
    return x


@pytest.mark.parametrize(("kv_format", "tokens", "k_over", "v_over", "entries", "fallback", "fallback_tokens"), [
    # 2 (K, V) x 3 heads x 4 tokens = 24 entries of 64 values each; amax 1.0, so only the 2.0 entries fall back.
    ("fp8", 4, [], [], 24, 0, 0),
    ("fp8", 4, [(1, 2)], [], 24, 1, 1),
    ("fp8", 4, [(0, 0), (1, 0), (2, 0)], [(0, 0)], 24, 4, 1),          # one token, four of its six entries
    ("nvfp4", 4, [(0, 1)], [(2, 3)], 24, 2, 2),
    ("int8", 10, [(h, t) for h in range(3) for t in range(10)], [], 60, 30, 10),
    ("bf16", 4, [(1, 2)], [(1, 2)], 0, 0, 0),                           # a bf16 layer quantizes nothing
])
def test_the_fallback_rate_is_the_share_of_quantized_entries_kept_at_higher_precision(
        kv_format: str, tokens: int, k_over: list, v_over: list, entries: int, fallback: int,
        fallback_tokens: int) -> None:
    log = WriteLog()
    layer = StoredLayer(0, kv_format, 1.0, 1.0, log, None)
    k, v = _tensor(tokens, k_over), _tensor(tokens, v_over)
    out_k, _ = layer.update(k, v)
    assert log.take_entries() == (entries, fallback)
    assert len(log.take()) == fallback_tokens
    # Every value of a fallback entry is held exactly (bf16 holds 2.0 and 0.5): what the rate counts is what is kept.
    for head, token in k_over:
        assert torch.equal(out_k[0, head, token], k[0, head, token])


def test_a_fallback_layer_of_the_plan_is_bf16_and_not_counted() -> None:
    cache = build_cache(2, "fp8", [(1.0, 1.0), (1.0, 1.0)], fallback_layers=frozenset({1}))
    for layer in cache.layers:
        layer.update(_tensor(4, [(0, 0)]), _tensor(4, []))
    assert [layer.kv_format for layer in cache.layers] == ["fp8", "bf16"]
    assert cache.write_log.take_entries() == (24, 1)


@pytest.mark.parametrize(("kv_format", "amax", "k_high", "v_high", "values", "out_of_range", "fallback"), [
    # 2 (K, V) x 3 heads x 4 tokens x 64 values = 1536 values; K holds 0.5 with one `k_high` at (head 1, token 2) and
    # one at (head 0, token 0), V the same with `v_high`; `amax` is K's and V's calibrated amax.
    ("fp8", 1.0, 0.5, 0.5, 1536, 0, 0),                 # everything in range
    ("fp8", 1.0, 1.0, 0.5, 1536, 0, 0),                 # exactly amax is in range (the scale holds it)
    ("fp8", 1.0, 2.0, 0.5, 1536, 2, 2),                 # two values out, two entries of 64 values fall back
    ("nvfp4", 1.0, 2.0, 3.0, 1536, 4, 4),
    ("int8", 0.25, 0.5, 0.5, 1536, 1536, 24),           # a stale amax below everything: every value out
    ("bf16", 1.0, 2.0, 2.0, 0, 0, 0),                   # a bf16 layer has no calibrated range
])
def test_the_out_of_range_share_counts_values_above_the_calibrated_amax(
        kv_format: str, amax: float, k_high: float, v_high: float, values: int, out_of_range: int,
        fallback: int) -> None:
    log = WriteLog()
    layer = StoredLayer(0, kv_format, amax, amax, log, None)
    layer.update(_tensor(4, [(1, 2), (0, 0)], high=k_high), _tensor(4, [(1, 2), (0, 0)], high=v_high))
    assert log.take_values() == (values, out_of_range)
    assert log.take_entries()[1] == fallback
    assert log.take_values() == (0, 0), "take resets"


def test_out_of_range_values_reach_the_serving_counters_with_the_fallback_labels() -> None:
    from qfleet_runtime import serving_metrics

    for name in (contract.KV_VALUES, contract.KV_OUT_OF_RANGE_VALUES):
        spec = serving_metrics.SPECS[name]
        assert (spec.kind, spec.labels) == (serving_metrics.SPECS[contract.KV_ENTRIES].kind,
                                            serving_metrics.SPECS[contract.KV_ENTRIES].labels)
    cache = build_cache(2, "fp8", [(1.0, 1.0), (1.0, 1.0)], fallback_layers=frozenset({1}))
    for layer in cache.layers:
        layer.update(_tensor(4, [(0, 0)], high=3.0), _tensor(4, []))
    assert cache.write_log.take_values() == (1536, 1), "the bf16 fallback layer counts in neither term"


# -- offline and live quality -----------------------------------------------------------------------------------------

EVAL_TEXT = (
    "The import statement combines two operations; it searches for the named module, then it binds the results of "
    "that search to a name in the local scope. The search operation of the import statement is defined as a call to "
    "the __import__() function, with the appropriate arguments. The return value of __import__() is used to perform "
    "the name binding operation of the import statement. A direct call to __import__() performs only the module "
    "search and, if found, the module creation operation. While certain side effects may occur, such as the "
    "importing of parent packages, and the updating of various caches, only the import statement performs a name "
    "binding operation.")
CALIBRATION_TEXT = (
    "A class definition is an executable statement. The inheritance list usually gives a list of base classes, so "
    "each item in the list should evaluate to a class object which allows subclassing. Classes without an "
    "inheritance list inherit, by default, from the base class object.")
AGREEMENT_BOUND = 0.002
"""Offline and live quality drops on the same text differ by at most this: they are the same computation (one code
path, `quality.score_text` over `stored_cache.build_cache`), so only float summation order could separate them."""


@pytest.fixture(scope="module")
def nvfp4_plan(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An NVFP4 calibration report made by max calibration on a short text (what ModelOpt's max calibration
    computes), with layer 3 planned at bf16; the evaluation text is another passage, so some entries exceed."""
    from qfleet_runtime import model_recipe

    model, tokenizer = model_recipe.load(model_dir)
    model.set_attn_implementation("sdpa")
    layers = int(model.config.num_hidden_layers)
    cache = build_cache(layers, "bf16", None)
    ids = tokenizer(CALIBRATION_TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    rows = [{"layer": i, "kAmax": float(eng_layer._k_work.abs().max()), "vAmax": float(eng_layer._v_work.abs().max())}
            for i, eng_layer in enumerate(cache.layers)]
    artifacts = tmp_path_factory.mktemp("plan") / "nvfp4"
    artifacts.mkdir(parents=True)
    (artifacts / "calibrate-report.json").write_text(json.dumps(
        {"kvFormat": "nvfp4", "layers": rows, "fallbackLayers": [3]}))
    (artifacts.parent / "eval.txt").write_text(EVAL_TEXT)
    return artifacts


def test_offline_and_live_quality_agree_on_the_same_text(model_dir: Path, nvfp4_plan: Path) -> None:
    code, offline, stderr = run_cli([*common("evaluate", "nvfp4", nvfp4_plan, nvfp4_plan.parent / "s.json"),
                                     "--model-uri", SMOLLM, "--model-revision", "main", "--baseline-kv-format", "bf16",
                                     "--eval-text", str(nvfp4_plan.parent / "eval.txt"), "--eval-seq-len", "1024"])
    assert code == 0, stderr[-3000:]
    assert offline["scales"] == "calibrated" and offline["bf16Layers"] == [3]

    amax, fallback_layers = eng.calibrated_amax(nvfp4_plan / "calibrate-report.json", "nvfp4")
    sink = RecordingSink()
    engine = eng.Engine(eng.EngineConfig("nvfp4", model_dir, amax, fallback_layers, quality_share=1.0), sink)
    try:
        engine.request(EVAL_TEXT, 1)
        assert engine.wait_quality(120)
    finally:
        engine.close()
    scored = sink.counter(contract.QUALITY_SCORED_TOKENS)
    live_drop = (sink.counter(contract.QUALITY_LOST_TOKENS) - sink.counter(contract.QUALITY_GAINED_TOKENS)) / scored
    live_fallback = sink.counter(contract.KV_FALLBACK_ENTRIES) / sink.counter(contract.KV_ENTRIES)

    report = json.loads(Path(offline["path"]).read_text())["metrics"]
    assert scored == offline["tokens"] > 100
    # NVFP4 moves some predictions either way, so the agreement is not two zeros; the counts themselves agree.
    assert report["lostTokens"] + report["gainedTokens"] > 0 and offline["top1Agreement"] < 1
    assert (sink.counter(contract.QUALITY_LOST_TOKENS), sink.counter(contract.QUALITY_GAINED_TOKENS)) == (
        report["lostTokens"], report["gainedTokens"])
    assert abs(live_drop - offline["qualityDrop"]) <= AGREEMENT_BOUND
    # The per-entry fallbacks are applied offline as they are served, and counted the same way.
    assert 0 < offline["fallbackRate"] < 0.05
    assert live_fallback == pytest.approx(offline["fallbackRate"], abs=1e-6)


# -- latency ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("parameters", "started_at"), [
    ('{"qfleet-arrival-ns": "%d"}' % 997_500_000_000, 97.5),   # arrived 2.5 s before now: queue time is counted
    ('{"qfleet-arrival-ns": %d}' % 997_500_000_000, 97.5),     # as a number, too
    ('{"qfleet-arrival-ns": "%d"}' % 1_005_000_000_000, 99.0),  # a stamp from the future is not believed
    ("{}", 99.0),                                               # gRPC: no front, timed from execute
    (None, 99.0),
    ('{"qfleet-arrival-ns": "soon"}', 99.0),
])
def test_a_request_is_timed_from_its_arrival_stamp(parameters: str | None, started_at: float) -> None:
    from qfleet_runtime.triton_model import request_start

    # wall clock 1000 s, monotonic clock 100 s, execute started at monotonic 99 s
    assert request_start(parameters, 99.0, wall=lambda: 1000.0, monotonic=lambda: 100.0) == pytest.approx(started_at)


def test_latency_buckets_tell_a_1_2x_p99_ratio_from_1x() -> None:
    from qfleet_runtime.serving_metrics import LATENCY_BUCKETS

    steps = [b / a for a, b in zip(LATENCY_BUCKETS, LATENCY_BUCKETS[1:])]
    assert all(1.049 < step < 1.051 for step in steps), "strictly increasing, 5% apart"
    # Between 0.1 s and 60 s a 1.2x ratio moves a quantile over at least three bucket bounds.
    for low in (0.1, 0.5, 1.0, 2.0, 10.0):
        assert sum(1 for b in LATENCY_BUCKETS if low < b <= 1.2 * low) >= 3
