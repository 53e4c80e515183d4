"""Shapes from published config.json files (tests/data/hf-configs/README.md says where each came from).

Expected numbers are worked out by hand from the config's values, not copied from the code.
"""

import json
from dataclasses import dataclass
from fractions import Fraction

import pytest

from qfleet.shapes import (
    FAMILIES,
    KNOWN_SHAPES,
    CacheGroup,
    CacheKind,
    ShapeError,
    checkpoint_weight_format,
    dense_shape,
    known_shape,
    shape_from_hf_config,
)

from .support import HF_CONFIGS


def _config(name: str) -> dict:
    return json.loads((HF_CONFIGS / name).read_text())


FULL, SLIDING, LATENT, STATE = CacheKind.FULL, CacheKind.SLIDING, CacheKind.LATENT, CacheKind.STATE


@dataclass(frozen=True)
class ConfigCase:
    reason: str
    config: str
    cache: tuple[CacheGroup, ...]
    parameters: int
    published: int
    """The model's published total, which `parameters` must be within `tolerance` of."""
    tolerance: Fraction = Fraction(0)


def _mla_layer(heads: int) -> int:
    """DeepSeek MLA with hidden 7168, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128."""
    q = 7168 * 1536 + 1536 + 1536 * heads * (128 + 64)
    kv = 7168 * (512 + 64) + 512 + 512 * heads * (128 + 128)
    return q + kv + heads * 128 * 7168


def _experts(routed: int) -> int:
    """DeepSeek-style MoE at hidden 7168: routed + 1 shared expert of 2048, router, score-correction bias."""
    return routed * 3 * 7168 * 2048 + 3 * 7168 * 2048 + routed * 7168 + routed


CONFIG_CASES = [
    ConfigCase(
        "DeepSeek-R1 (= V3): MLA, 3 dense then 58 MoE layers; the MTP layer is not counted",
        "deepseek-r1.json",
        (CacheGroup(LATENT, 61, 1, (512, 64)),),
        3 * (_mla_layer(128) + 3 * 7168 * 18432 + 2 * 7168)
        + 58 * (_mla_layer(128) + _experts(256) + 2 * 7168)
        + 2 * 129280 * 7168
        + 7168,
        published=671 * 10**9,  # "671B total parameters" (main model; 685B with the 14B MTP module)
        tolerance=Fraction(1, 1000),
    ),
    ConfigCase(
        "Kimi-K2: MLA with 64 heads, 1 dense then 60 MoE layers of 384 experts",
        "kimi-k2-instruct.json",
        (CacheGroup(LATENT, 61, 1, (512, 64)),),
        1 * (_mla_layer(64) + 3 * 7168 * 18432 + 2 * 7168)
        + 60 * (_mla_layer(64) + _experts(384) + 2 * 7168)
        + 2 * 163840 * 7168
        + 7168,
        published=1_040 * 10**9,  # "1.04 trillion total parameters" (a rounded figure)
        tolerance=Fraction(2, 100),
    ),
    ConfigCase(
        "Qwen3-8B: dense GQA with q/k norms",
        "qwen3-8b.json",
        (CacheGroup(FULL, 36, 8, (128, 128)),),
        36 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096) + 2 * 151936 * 4096 + 4096,
        published=8_190_000_000,  # "8.2B"; HF lists 8.19B
        tolerance=Fraction(1, 1000),
    ),
    ConfigCase(
        "Qwen3-30B-A3B: 128 experts of 768 on every layer",
        "qwen3-30b-a3b.json",
        (CacheGroup(FULL, 48, 4, (128, 128)),),
        48 * (2048 * 4096 * 2 + 2048 * 512 * 2 + 2 * 128 + 128 * 3 * 2048 * 768 + 128 * 2048 + 2 * 2048)
        + 2 * 151936 * 2048
        + 2048,
        published=30_500_000_000,  # "30.5B in total"
        tolerance=Fraction(1, 100),
    ),
    ConfigCase(
        "Qwen3-Next-80B-A3B: every 4th layer gated attention, the others Gated DeltaNet; the MTP layer is not counted",
        "qwen3-next-80b-a3b-instruct.json",
        (
            CacheGroup(FULL, 12, 2, (256, 256)),
            CacheGroup(STATE, 36, 32, (128 * 128, 3 * (2 * 16 * 128 + 32 * 128) // 32)),
        ),
        12 * (2048 * 16 * 256 * 2 + 2048 * 2 * 256 * 2 + 16 * 256 * 2048 + 2 * 256)
        + 36 * (2048 * (2 * 2048 + 2 * 4096) + 2048 * 2 * 32 + 4096 * 2048 + (2 * 2048 + 4096) * 4 + 32 + 32 + 128)
        + 48 * (512 * 3 * 2048 * 512 + 512 * 2048 + 3 * 2048 * 512 + 2048 + 2 * 2048)
        + 2 * 151936 * 2048
        + 2048,
        published=80 * 10**9,  # "80B in total" (a rounded figure)
        tolerance=Fraction(1, 100),
    ),
    ConfigCase(
        "gpt-oss-120b: alternating 128-token window and full layers; biases, sinks, 128 experts with biases",
        "gpt-oss-120b.json",
        (CacheGroup(FULL, 18, 8, (64, 64)), CacheGroup(SLIDING, 18, 8, (64, 64), window=128)),
        36
        * (
            2880 * 4096 + 4096 + 2 * (2880 * 512 + 512) + 4096 * 2880 + 2880 + 64
            + 2880 * 128 + 128 + 128 * (2880 * 5760 + 5760) + 128 * (2880 * 2880 + 2880)
            + 2 * 2880
        )
        + 2 * 201088 * 2880
        + 2880,
        published=116_830_000_000,  # model card: 116.83B total
        tolerance=Fraction(1, 10000),
    ),
    ConfigCase(
        "Gemma 3 27B: 5 window layers per global one; text model, SigLIP tower and projector",
        "gemma-3-27b-it.json",
        (CacheGroup(FULL, 10, 16, (128, 128)), CacheGroup(SLIDING, 52, 16, (128, 128), window=1024)),
        62 * (5376 * 4096 * 2 + 5376 * 2048 * 2 + 2 * 128 + 3 * 5376 * 21504 + 4 * 5376)
        + 5376
        + 262208 * 5376
        + 27 * (4 * (1152 * 1152 + 1152) + 2 * 1152 * 4304 + 4304 + 1152 + 4 * 1152)
        + 3 * 14 * 14 * 1152 + 1152 + (896 // 14) ** 2 * 1152 + 2 * 1152
        + 1152 * 5376 + 1152,
        published=27_400_000_000,  # HF lists 27.4B; the report: 417M vision, 1,416M embedding, 25,600M other
        tolerance=Fraction(1, 100),
    ),
    ConfigCase(
        "Gemma 2 9B: even layers slide over 4096 tokens; four norms per layer, tied embeddings",
        "gemma-2-9b-it.json",
        (CacheGroup(FULL, 21, 8, (256, 256)), CacheGroup(SLIDING, 21, 8, (256, 256), window=4096)),
        42 * (3584 * 4096 * 2 + 3584 * 2048 * 2 + 3 * 3584 * 14336 + 4 * 3584) + 3584 + 256000 * 3584,
        published=9_240_000_000,  # "9.24B"
        tolerance=Fraction(1, 1000),
    ),
    ConfigCase(
        "Phi-3-mini-4k: sliding_window 2047 on every layer, fused qkv and gate_up",
        "phi-3-mini-4k-instruct.json",
        (CacheGroup(SLIDING, 32, 32, (96, 96), window=2047),),
        32 * (3072 * 3 * 3072 + 3072 * 3072 + 3072 * 2 * 8192 + 8192 * 3072 + 2 * 3072) + 2 * 32064 * 3072 + 3072,
        published=3_821_079_552,
    ),
    ConfigCase(
        "Qwen2.5-7B: q/k/v biases; sliding_window is set but use_sliding_window is false",
        "qwen2.5-7b-instruct.json",
        (CacheGroup(FULL, 28, 4, (128, 128)),),
        28 * (3584 * 3584 * 2 + 3584 * 512 * 2 + 3584 + 2 * 512 + 3 * 3584 * 18944 + 2 * 3584)
        + 2 * 152064 * 3584
        + 3584,
        published=7_615_616_512,
    ),
    ConfigCase(
        "Mixtral-8x7B: 8 experts of 14336 on every layer",
        "mixtral-8x7b.json",
        (CacheGroup(FULL, 32, 8, (128, 128)),),
        32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 8 * 3 * 4096 * 14336 + 8 * 4096 + 2 * 4096) + 2 * 32000 * 4096 + 4096,
        published=46_702_792_704,
    ),
    ConfigCase(
        "Llama-3.3-70B",
        "llama-3.3-70b-instruct.json",
        (CacheGroup(FULL, 80, 8, (128, 128)),),
        80 * (8192 * 8192 * 2 + 8192 * 1024 * 2 + 3 * 8192 * 28672 + 2 * 8192) + 2 * 128256 * 8192 + 8192,
        published=70_553_706_496,
    ),
    ConfigCase(
        "SmolLM2-135M: tied embeddings, head_dim from hidden_size / heads",
        "smollm2-135m-instruct.json",
        (CacheGroup(FULL, 30, 3, (64, 64)),),
        30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536 + 2 * 576) + 49152 * 576 + 576,
        published=134_515_008,
    ),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda case: case.config)
def test_shape_from_a_published_config(case: ConfigCase) -> None:
    shape = shape_from_hf_config(_config(case.config))

    assert shape.cache == case.cache
    assert shape.parameter_count == case.parameters
    assert abs(Fraction(case.parameters, case.published) - 1) <= case.tolerance


CATALOG_FILES = {
    "hf://meta-llama/Llama-3.3-70B-Instruct": "llama-3.3-70b-instruct.json",
    "hf://HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct.json",
    "hf://mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b.json",
    "hf://Qwen/Qwen3-8B": "qwen3-8b.json",
    "hf://Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b.json",
    "hf://Qwen/Qwen3-Next-80B-A3B-Instruct": "qwen3-next-80b-a3b-instruct.json",
    "hf://deepseek-ai/DeepSeek-R1": "deepseek-r1.json",
    "hf://deepseek-ai/DeepSeek-V3": "deepseek-r1.json",
    "hf://moonshotai/Kimi-K2-Instruct": "kimi-k2-instruct.json",
    "hf://openai/gpt-oss-120b": "gpt-oss-120b.json",
    "hf://google/gemma-3-27b-it": "gemma-3-27b-it.json",
}


@pytest.mark.parametrize("uri, config", CATALOG_FILES.items())
def test_catalog_is_what_the_config_says(uri: str, config: str) -> None:
    assert KNOWN_SHAPES[uri] == shape_from_hf_config(_config(config))


def test_catalog_entries_without_a_vendored_config() -> None:
    assert KNOWN_SHAPES["hf://meta-llama/Llama-3.1-8B-Instruct"] == dense_shape(32, 8, 128, 8_030_261_248)
    gpt_oss_20b = KNOWN_SHAPES["hf://openai/gpt-oss-20b"]
    assert [group.layers for group in gpt_oss_20b.cache] == [12, 12]
    # gpt-oss-120b's layer with 32 experts instead of 128, 24 layers: the model card's 20.91B
    layer = (
        2880 * 4096 + 4096 + 2 * (2880 * 512 + 512) + 4096 * 2880 + 2880 + 64
        + 2880 * 32 + 32 + 32 * (2880 * 5760 + 5760) + 32 * (2880 * 2880 + 2880) + 2 * 2880
    )
    assert gpt_oss_20b.parameter_count == 24 * layer + 2 * 201088 * 2880 + 2880


def test_known_shape_ignores_case_and_trailing_slash() -> None:
    assert (
        known_shape("HF://meta-llama/llama-3.3-70b-instruct/") == KNOWN_SHAPES["hf://meta-llama/Llama-3.3-70B-Instruct"]
    )
    assert known_shape("hf://example/unknown") is None


def test_an_unknown_attention_kind_is_refused_with_its_keys_named() -> None:
    with pytest.raises(ShapeError) as raised:
        shape_from_hf_config(_config("jamba-v0.1.json"))

    message = str(raised.value)
    assert "model_type 'jamba' (JambaForCausalLM)" in message
    assert "attn_layer_period, attn_layer_offset, mamba_d_state" in message


def test_an_unknown_layer_type_is_refused_by_name() -> None:
    config = _config("gpt-oss-120b.json") | {"layer_types": ["chunked_attention"] * 36}

    with pytest.raises(ShapeError, match="layer_types has kinds qfleet cannot plan for: 'chunked_attention'"):
        shape_from_hf_config(config)


def test_layer_types_must_cover_every_layer() -> None:
    config = _config("gpt-oss-120b.json") | {"layer_types": ["full_attention"] * 35}

    with pytest.raises(ShapeError, match="must list the 36 layers"):
        shape_from_hf_config(config)


def test_qwen_windows_apply_from_max_window_layers_when_enabled() -> None:
    config = _config("qwen3-8b.json") | {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 28}

    assert shape_from_hf_config(config).cache == (
        CacheGroup(FULL, 28, 8, (128, 128)),
        CacheGroup(SLIDING, 8, 8, (128, 128), window=4096),
    )


def test_mistral_with_a_window_slides_on_every_layer() -> None:
    config = _config("llama-3.3-70b-instruct.json") | {"model_type": "mistral", "sliding_window": 4096}

    assert shape_from_hf_config(config).cache == (CacheGroup(SLIDING, 80, 8, (128, 128), window=4096),)


def test_an_explicit_parameter_count_wins() -> None:
    assert shape_from_hf_config(_config("mixtral-8x7b.json"), parameter_count=5).parameter_count == 5


@pytest.mark.parametrize(
    "config, stored",
    [
        ("deepseek-r1.json", "fp8"),
        ("qwen3-8b.json", "bf16"),
        ("gpt-oss-120b.json", None),  # mxfp4 experts: no weight format of qfleet's
        ("gemma-2-9b-it.json", None),  # float32
    ],
)
def test_checkpoint_weight_format(config: str, stored: str | None) -> None:
    assert checkpoint_weight_format(_config(config)) == stored


def test_checkpoint_bytes_come_with_their_format() -> None:
    shape = shape_from_hf_config(_config("deepseek-r1.json"), checkpoint_bytes=688_586_727_753)

    assert shape.checkpoint is not None
    assert (shape.checkpoint.weight_format, shape.checkpoint.total_bytes) == ("fp8", 688_586_727_753)


def test_missing_field_is_named() -> None:
    with pytest.raises(ShapeError, match="num_hidden_layers"):
        shape_from_hf_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4})


def test_shape_rejects_zero() -> None:
    with pytest.raises(ShapeError, match="head_dim"):
        dense_shape(num_layers=1, num_key_value_heads=1, head_dim=0, parameter_count=1)


def test_a_window_belongs_to_sliding_layers_only() -> None:
    with pytest.raises(ShapeError, match="window"):
        CacheGroup(FULL, 1, 1, (64, 64), window=128)
    with pytest.raises(ShapeError, match="window"):
        CacheGroup(SLIDING, 1, 1, (64, 64))


def test_every_family_has_a_vendored_config() -> None:
    vendored = {_config(path.name).get("model_type") for path in HF_CONFIGS.glob("*.json")}

    assert set(FAMILIES) - vendored == {"mistral", "deepseek_v2", "gemma3_text"}
