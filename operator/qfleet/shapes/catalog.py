"""Shapes of models qfleet plans for often, keyed by `spec.model.uri`.

Each entry is what `shape_from_hf_config` derives from the model's published `config.json`
(tests/data/hf-configs/ holds them and a unit test checks every entry against its file). Parameter
counts are exact and exclude speculative-decoding (MTP) layers.
"""

from __future__ import annotations

from qfleet.shapes.model import CacheGroup, CacheKind, ModelShape, dense_shape


def _attention(kind: CacheKind, layers: int, kv_heads: int, head_dim: int, window: int | None = None) -> CacheGroup:
    return CacheGroup(kind, layers, heads=kv_heads, vectors=(head_dim, head_dim), window=window)


def _deepseek_mla(parameter_count: int) -> ModelShape:
    """61 MLA layers, each caching a 512-value latent and a 64-value rope key per token."""
    latent = CacheGroup(CacheKind.LATENT, 61, heads=1, vectors=(512, 64))
    return ModelShape(cache=(latent,), parameter_count=parameter_count)


_LLAMA_70B = dense_shape(num_layers=80, num_key_value_heads=8, head_dim=128, parameter_count=70_553_706_496)
_LLAMA_8B = dense_shape(num_layers=32, num_key_value_heads=8, head_dim=128, parameter_count=8_030_261_248)
_SMOLLM2_135M = dense_shape(num_layers=30, num_key_value_heads=3, head_dim=64, parameter_count=134_515_008)
_MIXTRAL_8X7B = dense_shape(num_layers=32, num_key_value_heads=8, head_dim=128, parameter_count=46_702_792_704)
_QWEN3_8B = dense_shape(num_layers=36, num_key_value_heads=8, head_dim=128, parameter_count=8_190_735_360)
_QWEN3_30B_A3B = dense_shape(num_layers=48, num_key_value_heads=4, head_dim=128, parameter_count=30_532_122_624)
_QWEN3_NEXT_80B_A3B = ModelShape(
    cache=(
        _attention(CacheKind.FULL, 12, kv_heads=2, head_dim=256),
        CacheGroup(CacheKind.STATE, 36, heads=32, vectors=(128 * 128, 3 * 8192 // 32)),
    ),
    parameter_count=79_674_391_296,
)
_DEEPSEEK_V3 = _deepseek_mla(671_026_419_200)
_KIMI_K2 = _deepseek_mla(1_026_408_232_448)
_GPT_OSS_120B = ModelShape(
    cache=(_attention(CacheKind.FULL, 18, 8, 64), _attention(CacheKind.SLIDING, 18, 8, 64, window=128)),
    parameter_count=116_829_156_672,
)
_GPT_OSS_20B = ModelShape(
    cache=(_attention(CacheKind.FULL, 12, 8, 64), _attention(CacheKind.SLIDING, 12, 8, 64, window=128)),
    parameter_count=20_914_757_184,
)
_GEMMA3_27B = ModelShape(
    cache=(_attention(CacheKind.FULL, 10, 16, 128), _attention(CacheKind.SLIDING, 52, 16, 128, window=1024)),
    parameter_count=27_432_406_640,
)

KNOWN_SHAPES: dict[str, ModelShape] = {
    "hf://meta-llama/Llama-3.3-70B-Instruct": _LLAMA_70B,
    "hf://meta-llama/Llama-3.1-70B-Instruct": _LLAMA_70B,
    "hf://meta-llama/Llama-3.1-8B": _LLAMA_8B,
    "hf://meta-llama/Llama-3.1-8B-Instruct": _LLAMA_8B,
    "hf://HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "hf://mistralai/Mixtral-8x7B-Instruct-v0.1": _MIXTRAL_8X7B,
    "hf://Qwen/Qwen3-8B": _QWEN3_8B,
    "hf://Qwen/Qwen3-30B-A3B": _QWEN3_30B_A3B,
    "hf://Qwen/Qwen3-Next-80B-A3B-Instruct": _QWEN3_NEXT_80B_A3B,
    "hf://deepseek-ai/DeepSeek-V3": _DEEPSEEK_V3,
    "hf://deepseek-ai/DeepSeek-V3-0324": _DEEPSEEK_V3,
    "hf://deepseek-ai/DeepSeek-R1": _DEEPSEEK_V3,
    "hf://deepseek-ai/DeepSeek-R1-0528": _DEEPSEEK_V3,
    "hf://moonshotai/Kimi-K2-Instruct": _KIMI_K2,
    "hf://openai/gpt-oss-120b": _GPT_OSS_120B,
    "hf://openai/gpt-oss-20b": _GPT_OSS_20B,
    "hf://google/gemma-3-27b-it": _GEMMA3_27B,
}


def known_shape(uri: str) -> ModelShape | None:
    """The catalog shape for a model URI, ignoring case and a trailing slash."""
    wanted = uri.rstrip("/").lower()
    for key, shape in KNOWN_SHAPES.items():
        if key.lower() == wanted:
            return shape
    return None
