import json

import pytest

from qfleet.shapes import KNOWN_SHAPES, ModelShape, ShapeError, known_shape, shape_from_hf_config

from .support import HF_CONFIGS


def _config(name: str) -> dict:
    return json.loads((HF_CONFIGS / name).read_text())


@pytest.mark.parametrize(
    "config, uri",
    [
        ("llama-3.3-70b-instruct.json", "hf://meta-llama/Llama-3.3-70B-Instruct"),
        ("smollm2-135m-instruct.json", "hf://HuggingFaceTB/SmolLM2-135M-Instruct"),
    ],
)
def test_shape_from_config_matches_the_catalog_exactly(config: str, uri: str) -> None:
    assert shape_from_hf_config(_config(config)) == KNOWN_SHAPES[uri]


def test_catalog_shapes() -> None:
    assert KNOWN_SHAPES["hf://meta-llama/Llama-3.3-70B-Instruct"] == ModelShape(80, 8, 128, 70_553_706_496)
    assert KNOWN_SHAPES["hf://HuggingFaceTB/SmolLM2-135M-Instruct"] == ModelShape(30, 3, 64, 134_515_008)
    assert KNOWN_SHAPES["hf://meta-llama/Llama-3.1-8B-Instruct"].parameter_count == 8_030_261_248


def test_known_shape_ignores_case_and_trailing_slash() -> None:
    assert (
        known_shape("HF://meta-llama/llama-3.3-70b-instruct/") == KNOWN_SHAPES["hf://meta-llama/Llama-3.3-70B-Instruct"]
    )
    assert known_shape("hf://example/unknown") is None


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    config = _config("smollm2-135m-instruct.json")

    assert "head_dim" not in config
    assert shape_from_hf_config(config).head_dim == 576 // 9


def test_mixture_of_experts_needs_an_explicit_parameter_count() -> None:
    config = _config("mixtral-8x7b.json")

    with pytest.raises(ShapeError, match=r"mixture-of-experts .*num_local_experts.*--parameters"):
        shape_from_hf_config(config)
    assert shape_from_hf_config(config, parameter_count=46_702_792_704).num_layers == 32


def test_missing_field_is_named() -> None:
    with pytest.raises(ShapeError, match="num_hidden_layers"):
        shape_from_hf_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4})


def test_shape_rejects_zero() -> None:
    with pytest.raises(ShapeError, match="head_dim"):
        ModelShape(num_layers=1, num_key_value_heads=1, head_dim=0, parameter_count=1)
