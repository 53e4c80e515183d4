"""The serving backend's pure parts, without Triton: KV packing, the fallback decision, the prefix cache's accounting,
the model repository files and the metrics table. Table-driven where the rule is a table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")

from qfleet.api import metrics as contract  # noqa: E402
from qfleet.capacity import kv_bytes_per_token  # noqa: E402
from qfleet.formats import kv_format  # noqa: E402
from qfleet.shapes import known_shape  # noqa: E402
from qfleet_runtime import kvquant, kvstore, serving_metrics, triton_repo  # noqa: E402
from qfleet_runtime.engine import Faults, ServeError  # noqa: E402
from qfleet_runtime.prefix_cache import PrefixCache, block_keys, reusable_blocks  # noqa: E402

SMOLLM = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"


def kv_like(tokens: int, heads: int = 3, head_dim: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, tokens, head_dim, generator=generator) * 2
    x[0, 0, :3] = torch.tensor([9.0, -7.5, 0.0])  # an outlier-ish token and an exact zero
    x[1, 1, :16] = 0.0  # an all-zero NVFP4 block
    return x


# -- packing ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", kvstore.STORED_FORMATS)
def test_unpacked_values_equal_the_fake_quantization_bit_for_bit(fmt: str) -> None:
    x = kv_like(40)
    amax = float(x.abs().amax()) * 0.8  # some values above amax: saturation must match too
    expected = kvquant.fake_quantize(x, fmt, None if fmt == "bf16" else amax)
    got = kvstore.unpack(kvstore.pack(x, fmt, amax))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("fmt", kvstore.STORED_FORMATS)
def test_stored_bytes_per_token_are_the_planners(fmt: str) -> None:
    shape = known_shape(SMOLLM)
    assert shape is not None
    tokens = 64
    (attention,) = shape.cache
    x = kv_like(tokens, attention.heads, attention.vectors[0])
    per_layer = sum(kvstore.pack(t, fmt, 8.0).nbytes for t in (x, x))  # K and V
    measured = Fraction(per_layer * shape.num_layers, tokens)
    assert measured == kv_bytes_per_token(shape, kv_format(fmt))


@dataclass
class CodeCase:
    reason: str
    value: float
    code: int
    decoded: float


@pytest.mark.parametrize("case", [
    CodeCase("zero", 0.0, 0, 0.0),
    CodeCase("exact grid value", 1.5, 3, 1.5),
    CodeCase("tie 0.25 goes to even (0)", 0.25, 0, 0.0),
    CodeCase("tie 0.75 goes to even (1.0)", 0.75, 2, 1.0),
    CodeCase("tie 2.5 goes to even (2.0)", 2.5, 4, 2.0),
    CodeCase("tie 5 goes to even (4.0)", 5.0, 6, 4.0),
    CodeCase("saturates at 6", 100.0, 7, 6.0),
    CodeCase("negative carries the sign bit", -3.0, 0x8 | 5, -3.0),
    CodeCase("negative zero is plain zero", -0.1, 0, 0.0),
], ids=lambda c: c.reason)
def test_e2m1_codes(case: CodeCase) -> None:
    code = kvstore.e2m1_codes(torch.tensor([case.value]))
    assert int(code[0]) == case.code
    assert float(kvstore.e2m1_values(code)[0]) == case.decoded


def test_nibbles_pack_two_codes_per_byte_low_first() -> None:
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = kvstore.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F]]
    assert torch.equal(kvstore.unpack_nibbles(packed), codes)


def test_fallback_entries_are_kept_in_bf16_and_counted_in_the_bytes() -> None:
    x = kv_like(8)
    amax = 4.0
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 0] = True  # the 9.0 entry
    plain, kept = kvstore.pack(x, "nvfp4", amax), kvstore.pack(x, "nvfp4", amax, mask)
    out = kvstore.unpack(kept)
    assert torch.equal(out[0, 0], x[0, 0].to(torch.bfloat16).float())  # not clipped at 4
    assert torch.equal(out[1:], kvstore.unpack(plain)[1:])
    assert kept.nbytes - plain.nbytes == 64 * 2 + kvstore.INDEX_BYTES


def test_concat_and_slice_keep_fallback_entries_in_place() -> None:
    x = kv_like(12)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[2, 3] = mask[0, 9] = True
    whole = kvstore.pack(x, "fp8", 3.0, mask)
    parts = [kvstore.slice_tokens(whole, 0, 4), kvstore.slice_tokens(whole, 4, 8), kvstore.slice_tokens(whole, 8, 12)]
    assert [p.fallback_index.numel() for p in parts] == [1, 0, 1]
    again = kvstore.concat(parts)
    assert torch.equal(kvstore.unpack(again), kvstore.unpack(whole))
    assert again.nbytes == whole.nbytes


def test_concat_refuses_runs_of_different_scales() -> None:
    x = kv_like(2)
    with pytest.raises(ValueError, match="same format"):
        kvstore.concat([kvstore.pack(x, "fp8", 3.0), kvstore.pack(x, "fp8", 4.0)])


@dataclass
class FallbackCase:
    reason: str
    head_amax: list[list[float]]
    """(heads, tokens)"""
    limit: float
    detector: kvstore.OutlierDetector | None
    mask: list[list[bool]]
    reasons: list[str]


@pytest.mark.parametrize("case", [
    FallbackCase("nothing exceeds", [[1.0, 2.0], [0.5, 1.9]], 2.0, None, [[False, False], [False, False]], ["", ""]),
    FallbackCase("exactly at amax still fits", [[2.0]], 2.0, None, [[False]], [""]),
    FallbackCase("only the exceeding head falls back", [[1.0, 2.5], [1.0, 1.0]], 2.0, None,
                 [[False, True], [False, False]], ["", "scale"]),
    FallbackCase("an outlier token falls back on every head",
                 [[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 1.0]], 100.0,
                 kvstore.OutlierDetector(factor=4.0, warmup=3),
                 [[False, False, False, True], [False, False, False, True]], ["", "", "", "outlier"]),
    FallbackCase("the detector waits for its warm-up", [[1.0, 9.0]], 100.0, kvstore.OutlierDetector(4.0, warmup=2),
                 [[False, False]], ["", ""]),
    FallbackCase("factor 0 switches the detector off", [[1.0, 1.0, 1.0, 50.0]], 100.0,
                 kvstore.OutlierDetector(0.0, warmup=1), [[False] * 4], [""] * 4),
], ids=lambda c: c.reason)
def test_fallback_entries(case: FallbackCase) -> None:
    mask, reasons = kvstore.fallback_entries(torch.tensor(case.head_amax), case.limit, case.detector)
    assert mask.tolist() == case.mask
    assert reasons == case.reasons


def test_an_outlier_does_not_teach_the_detector() -> None:
    detector = kvstore.OutlierDetector(factor=3.0, warmup=2)
    assert detector.check([1.0, 1.0, 10.0, 10.0, 1.0]) == [False, False, True, True, False]


@pytest.mark.parametrize(("k", "v", "merged"), [(["", "scale", ""], ["outlier", "", ""], ["outlier", "scale", ""])])
def test_a_token_falls_back_when_its_k_or_v_does(k: list[str], v: list[str], merged: list[str]) -> None:
    assert kvstore.merge_reasons(k, v) == merged


# -- prefix cache -----------------------------------------------------------------------------------------------------

def test_block_keys_cover_the_whole_prefix() -> None:
    a = block_keys([1, 2, 3, 4, 5, 6, 7], 2)
    b = block_keys([1, 2, 3, 4, 9, 9, 7], 2)
    c = block_keys([0, 2, 3, 4], 2)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert c[1] != a[1]  # same tokens in block 1, different prefix
    assert block_keys([1, 2, 3, 4, 5], 2, limit=1) == a[:1]


@pytest.mark.parametrize(("prompt", "block", "reusable"), [(0, 4, 0), (1, 4, 0), (4, 4, 0), (5, 4, 1), (17, 16, 1),
                                                           (33, 16, 2), (32, 16, 1)])
def test_the_last_prompt_token_is_always_computed(prompt: int, block: int, reusable: int) -> None:
    assert reusable_blocks(prompt, block) == reusable


@dataclass
class CacheStep:
    op: str
    keys: list[str]
    nbytes: int = 0
    hits: int = 0
    held: tuple[str, ...] | None = None
    """Keys held afterwards (None: not checked)."""


@dataclass
class CacheCase:
    reason: str
    budget: int
    steps: list[CacheStep]


@pytest.mark.parametrize("case", [
    CacheCase("hits stop at the first miss", 100, [
        CacheStep("insert", ["a"], 10), CacheStep("insert", ["c"], 10),
        CacheStep("lookup", ["a", "b", "c"], hits=1, held=("a", "c"))]),
    CacheCase("least recently used goes first", 30, [
        CacheStep("insert", ["a"], 10), CacheStep("insert", ["b"], 10), CacheStep("insert", ["c"], 10),
        CacheStep("lookup", ["a"], hits=1), CacheStep("insert", ["d"], 10, held=("a", "c", "d"))]),
    CacheCase("a block over the whole budget is not kept", 30, [
        CacheStep("insert", ["a"], 10), CacheStep("insert", ["big"], 31, held=("a",))]),
    CacheCase("a big block evicts as many as it needs", 30, [
        CacheStep("insert", ["a"], 10), CacheStep("insert", ["b"], 10), CacheStep("insert", ["c"], 10),
        CacheStep("insert", ["d"], 25, held=("d",))]),
    CacheCase("zero budget keeps nothing", 0, [CacheStep("insert", ["a"], 1, held=())]),
], ids=lambda c: c.reason)
def test_prefix_cache_lru_within_budget(case: CacheCase) -> None:
    cache = PrefixCache(case.budget)
    for step in case.steps:
        if step.op == "insert":
            for key in step.keys:
                cache.insert(key, key, step.nbytes)
        else:
            assert cache.lookup(step.keys).hits == step.hits
        if step.held is not None:
            assert tuple(k for k in ("a", "b", "c", "d", "big") if k in cache) == step.held
        assert cache.used_bytes <= case.budget


def test_the_same_budget_gives_nvfp4_more_hits_than_bf16() -> None:
    """Pure accounting with the planner's block sizes: 3 prompts of 4 blocks, twice, in a 2 MiB budget."""
    shape = known_shape(SMOLLM)
    rates = {}
    for fmt in ("bf16", "fp8", "nvfp4"):
        block_bytes = int(16 * kv_bytes_per_token(shape, kv_format(fmt)))
        cache = PrefixCache(2 << 20)
        for _ in range(2):
            for doc in range(3):
                keys = block_keys([doc] * 64, 16)
                found = cache.lookup(keys)
                for key in keys[found.hits:]:
                    cache.insert(key, None, block_bytes)
        rates[fmt] = cache.hit_rate
    # 2 MiB holds 5 BF16, 11 FP8 and 20 NVFP4 blocks of 16 tokens: a working set of 12 blocks thrashes the first two
    assert rates == {"bf16": 0.0, "fp8": 0.0, "nvfp4": 0.5}


# -- repository files, metrics table, fault switch --------------------------------------------------------------------

def test_config_parameters_are_rewritten_for_the_serving_machine() -> None:
    model = triton_repo.CpuModel("nvfp4", "/m", "/r.json", 8, 512, 1 << 20, "/build/venv", "/src")
    text = triton_repo.cpu_config_pbtxt(model)
    assert 'backend: "python"' in text and "max_batch_size: 8" in text
    changed = triton_repo.set_parameters(text, {"EXECUTION_ENV_PATH": "/serve/venv", "quality_sample_share": "1.0"})
    parameters = triton_repo.read_parameters(changed)
    assert parameters["EXECUTION_ENV_PATH"] == "/serve/venv" and parameters["quality_sample_share"] == "1.0"
    assert parameters["kv_format"] == "nvfp4" and parameters["max_seq_len"] == "512"
    assert changed.count('key: "EXECUTION_ENV_PATH"') == 1


def test_trtllm_options_carry_the_kv_dtype_and_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = triton_repo.llm_api_options("nvfp4", 64, 65536, 8192, 8, 0.9)
    files = triton_repo.write_trtllm_repository(tmp_path, "/ckpt", options)
    text = (tmp_path / "llm_api_options.yaml").read_text()
    assert 'dtype: "nvfp4"' in text and "free_gpu_memory_fraction: 0.9" in text and "tensor_parallel_size: 8" in text
    assert (tmp_path / "model_repository" / "tensorrt_llm" / "1" / "model.yaml").is_file()
    assert json.dumps(files)


def test_the_runtime_exports_exactly_the_contract() -> None:
    assert set(serving_metrics.SPECS) == set(contract.ALL)
    for spec in serving_metrics.SPECS.values():
        assert (spec.kind == serving_metrics.COUNTER) == spec.name.endswith("_total")
        assert (spec.kind == serving_metrics.HISTOGRAM) == bool(spec.buckets)


def test_the_recording_sink_checks_names_and_labels() -> None:
    sink = serving_metrics.RecordingSink()
    sink.add(contract.REQUESTS, 1, outcome="success")
    assert sink.counter(contract.REQUESTS, outcome="success") == 1
    with pytest.raises(ValueError, match="labels"):
        sink.add(contract.REQUESTS, 1)
    with pytest.raises(ValueError, match="not a gauge"):
        sink.set(contract.REQUESTS, 1)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, Faults()),
    ({"QFLEET_FAULT_LATENCY_SECONDS": "0.25"}, Faults(latency_seconds=0.25)),
    ({"QFLEET_FAULT_KV_SCALE": "0.5", "QFLEET_FAULT_QUALITY_DROP": "0.05"}, Faults(kv_scale=0.5, quality_noise=0.05)),
])
def test_the_fault_switch_is_read_from_the_environment(monkeypatch, env, expected) -> None:  # type: ignore[no-untyped-def]
    for name in ("QFLEET_FAULT_LATENCY_SECONDS", "QFLEET_FAULT_KV_SCALE", "QFLEET_FAULT_QUALITY_DROP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Faults.from_env() == expected


@pytest.mark.parametrize("env", [{"QFLEET_FAULT_KV_SCALE": "0"}, {"QFLEET_FAULT_LATENCY_SECONDS": "-1"},
                                 {"QFLEET_FAULT_QUALITY_DROP": "lots"}])
def test_a_bad_fault_switch_is_refused(monkeypatch, env) -> None:  # type: ignore[no-untyped-def]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ServeError):
        Faults.from_env()


def test_unpacking_run_by_run_equals_unpacking_the_whole() -> None:
    """What lets the engine dequantize only the new tokens of each step."""
    x = kv_like(20)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[1, 12] = True
    for fmt in kvstore.STORED_FORMATS:
        runs = [kvstore.pack(x[:, a:b], fmt, 3.0, mask[:, a:b]) for a, b in ((0, 7), (7, 8), (8, 20))]
        whole = kvstore.unpack(kvstore.concat(runs))
        assert torch.equal(torch.cat([kvstore.unpack(r) for r in runs], dim=1), whole), fmt
