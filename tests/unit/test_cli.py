"""`qfleet plan`, run in-process through `main([...])`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest

from qfleet.cli.main import main
from qfleet.cli.render import exact_decimal, format_bytes, parameter_count, percent

from .support import HF_CONFIGS, REPO

NVFP4_EXAMPLE = str(REPO / "examples" / "llama-70b-nvfp4.yaml")

NVFP4_ON_B200 = """\
Model     hf://meta-llama/Llama-3.3-70B-Instruct: 80 layers, 8 KV heads, head dim 128, 70.55B parameters
Replica   8 x B200 (179.06 GiB each, compute capability 10.0), tensor parallel 8
Memory    1.4 TiB in all; bf16 weights 131.42 GiB; KV cache 0.9 of the rest = 1.14 TiB
Sequence  65,536 tokens (SEQUENCES: how many fit in the KV cache at once)

KV FORMAT  BYTES/VALUE  KV/TOKEN  PER GPU    VS BF16  TOKENS/REPLICA  SEQUENCES  ON B200  NOTE
bf16                 2  320 KiB   40 KiB     -             3,837,028         58  yes
fp8                  1  160 KiB   20 KiB     -50%          7,674,056        117  yes
int8                 1  160 KiB   20 KiB     -50%          7,674,056        117  yes
nvfp4           0.5625  90 KiB    11.25 KiB  -71.88%      13,642,767        208  yes      requested
mxfp4          0.53125  85 KiB    10.62 KiB  -73.44%      14,445,282        220  yes      comparison only

nvfp4 stores 43.75% less than fp8 per token, not 50%: every 16 values share a one-byte scale.
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_for_the_readme_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--model", NVFP4_EXAMPLE, "--gpu", "B200")

    assert (code, err) == (0, "")
    assert out == NVFP4_ON_B200


def test_json_output_carries_exact_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--model", NVFP4_EXAMPLE, "--gpu", "B200", "-o", "json")

    plan = json.loads(out)
    assert code == 0
    per_token = {row["name"]: row["kvBytesPerToken"] for row in plan["formats"]}
    assert per_token == {"bf16": 327_680, "fp8": 163_840, "int8": 163_840, "nvfp4": 92_160, "mxfp4": 87_040}
    nvfp4 = next(row for row in plan["formats"] if row["name"] == "nvfp4")
    assert nvfp4 == nvfp4 | {"bytesPerValue": "0.5625", "savingVsBf16": "0.71875", "requested": True, "runsOnGpu": True}
    assert plan["memory"]["weightBytes"] == 141_107_412_992
    assert (plan["gpusPerReplica"], plan["tensorParallel"], plan["sequenceLength"]) == (8, 8, 65_536)


def test_flags_override_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        NVFP4_EXAMPLE,
        "--gpu",
        "gb200",
        "--gpus-per-replica",
        "4",
        "--seq-len",
        "8192",
        "--weights",
        "fp8",
        "--kv-memory-fraction",
        "0.5",
        "-o",
        "json",
    )

    plan = json.loads(out)
    assert code == 0
    assert (plan["gpu"]["name"], plan["gpusPerReplica"], plan["tensorParallel"]) == ("GB200", 4, 4)
    assert (plan["sequenceLength"], plan["weights"], plan["kvMemoryFraction"]) == (8192, "fp8", "0.5")


def test_plan_from_a_hugging_face_config(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(HF_CONFIGS / "smollm2-135m-instruct.json")

    code, out, _ = run(capsys, "plan", "--model", config, "--gpu", "L40S")

    assert code == 0
    assert "30 layers, 3 KV heads, head dim 64, 134.52M parameters" in out
    assert "Sequence  8,192 tokens" in out
    assert "ON L40S" in out and "no, needs 10.0" in out


def test_weights_that_do_not_fit_are_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(HF_CONFIGS / "llama-3.3-70b-instruct.json")

    code, out, _ = run(capsys, "plan", "--model", config, "--gpu", "L40S")

    assert code == 0
    assert "bf16 weights 131.42 GiB: the weights alone do not fit" in out
    assert "Warning: the bf16 weights alone (131.4 GiB) do not fit in 1 x L40S (45.0 GiB)" in out


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


UNKNOWN_SHAPE = """\
apiVersion: qfleet.io/v1alpha1
kind: QuantizedModel
metadata: {name: private}
spec:
  model: {uri: "s3://models/private-13b"}
  quantization: {kvCache: fp8}
  serving: {image: triton}
  artifacts: {uri: "s3://artifacts/private"}
"""

INVALID = """\
apiVersion: qfleet.io/v1alpha1
kind: QuantizedModel
metadata: {name: broken}
spec:
  model: {uri: "hf://meta-llama/Llama-3.3-70B-Instruct"}
  quantization: {kvCache: fp4}
  serving: {image: triton, replicas: "4"}
  artifacts: {uri: "pvc://a/b"}
"""


@pytest.mark.parametrize(
    "files, argv, says",
    [
        ({}, ["--gpu", "V100"], "unknown GPU 'V100': use one of B200, GB200, H200, H100, L40S, A100"),
        (
            {"m.yaml": UNKNOWN_SHAPE},
            ["--gpu", "H100"],
            "the shape of s3://models/private-13b is unknown: add spec.model.shape",
        ),
        ({"m.yaml": INVALID}, ["--gpu", "H100"], "spec.quantization.kvCache: unknown KV-cache format 'fp4'"),
        (
            {"m.yaml": INVALID},
            ["--gpu", "H100"],
            "spec.serving.replicas: must be a whole number: write 4 without quotes",
        ),
        ({"m.yaml": "kind: Deployment\n"}, ["--gpu", "H100"], "neither a QuantizedModel"),
        ({"m.yaml": "a: [\n"}, ["--gpu", "H100"], "is not YAML or JSON"),
    ],
)
def test_errors_are_reported_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], says: str
) -> None:
    model = _write(tmp_path, "m.yaml", files["m.yaml"]) if files else NVFP4_EXAMPLE

    code, out, err = run(capsys, "plan", "--model", model, *argv)

    assert (code, out) == (2, "")
    assert err.startswith("qfleet plan: error: ")
    assert says in err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["plan", "--gpu", "B200"], "the following arguments are required: --model"),
        (["plan", "--model", NVFP4_EXAMPLE, "--gpu", "B200", "--seq-len", "0"], "must be at least 1"),
        (["plan", "--model", NVFP4_EXAMPLE, "--gpu", "B200", "--kv-memory-fraction", "1.5"], "at most 1"),
        (["plan", "--model", NVFP4_EXAMPLE, "--gpu", "B200", "--weights", "fp4"], "invalid choice: 'fp4'"),
    ],
)
def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)

    assert raised.value.code == 2
    assert says in capsys.readouterr().err


def test_missing_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "plan", "--model", str(tmp_path / "absent.yaml"), "--gpu", "B200")

    assert code == 2
    assert "cannot read" in err and "absent.yaml" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)

    assert code == 2
    assert "plan" in err


@pytest.mark.parametrize(
    "size, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (327_680, "320 KiB"),
        (92_160, "90 KiB"),
        (39_686_459_904, "36.96 GiB"),
        (2**40, "1 TiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_number_helpers() -> None:
    assert exact_decimal(Fraction(17, 32)) == "0.53125"
    assert percent(Fraction(7, 16)) == "43.75%"
    assert parameter_count(70_553_706_496) == "70.55B"
    assert parameter_count(134_515_008) == "134.52M"


@dataclass(frozen=True)
class FamilyCase:
    reason: str
    config: str
    gpus: int
    sequence_length: int
    kv_bytes_per_token: dict[str, int | str]
    per_gpu: dict[str, int | str]
    parameters: int


# One model per attention kind, from its config.json alone; bytes worked out by hand.
FAMILY_CASES = [
    FamilyCase(
        "MLA: 61 layers x (512 + 64) latent values; TP 8 copies it to every GPU",
        "deepseek-r1.json",
        8,
        8192,
        {"bf16": 61 * 576 * 2, "fp8": 61 * 576, "nvfp4": 61 * (288 + 36)},
        {"bf16": 61 * 576 * 2 * 8 // 8, "nvfp4": 61 * (288 + 36) * 8 // 8},
        671_026_419_200,
    ),
    FamilyCase(
        "sliding window: 18 full layers hold 8192 tokens, 18 hold 128",
        "gpt-oss-120b.json",
        8,
        8192,
        {"bf16": (18 * 8192 + 18 * 128) * 2 * 8 * 64 * 2 // 8192, "fp8": (18 * 8192 + 18 * 128) * 2 * 8 * 64 // 8192},
        {"bf16": (18 * 8192 + 18 * 128) * 2 * 8 * 64 * 2 // 8192 // 8},
        116_829_156_672,
    ),
    FamilyCase(
        "hybrid: 12 attention layers grow, 36 Gated DeltaNet layers keep one bf16 state each",
        "qwen3-next-80b-a3b-instruct.json",
        1,
        16384,
        {
            "bf16": (12 * 2 * 2 * 256 * 2 * 16384 + 36 * 32 * 17152 * 2) // 16384,
            "fp8": (12 * 2 * 2 * 256 * 16384 + 36 * 32 * 17152 * 2) // 16384,
        },
        {"fp8": (12 * 2 * 2 * 256 * 16384 + 36 * 32 * 17152 * 2) // 16384},
        79_674_391_296,
    ),
]


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda case: case.config)
def test_plan_from_a_config_alone_for_each_attention_kind(
    capsys: pytest.CaptureFixture[str], case: FamilyCase
) -> None:
    code, out, err = run(
        capsys,
        "plan",
        "--model",
        str(HF_CONFIGS / case.config),
        "--gpu",
        "B200",
        "--gpus-per-replica",
        str(case.gpus),
        "--seq-len",
        str(case.sequence_length),
        "-o",
        "json",
    )

    assert (code, err) == (0, "")
    plan = json.loads(out)
    rows = {row["name"]: row for row in plan["formats"]}
    assert plan["model"]["parameterCount"] == case.parameters
    assert {name: rows[name]["kvBytesPerToken"] for name in case.kv_bytes_per_token} == case.kv_bytes_per_token
    assert {name: rows[name]["kvBytesPerTokenPerGpu"] for name in case.per_gpu} == case.per_gpu


def test_a_checkpoint_directory_plans_with_its_exact_weight_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text((HF_CONFIGS / "deepseek-r1.json").read_text())
    index = {"metadata": {"total_size": 688_586_727_753}, "weight_map": {"lm_head.weight": "model-00163.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    code, out, _ = run(capsys, "plan", "--model", str(tmp_path), "--gpu", "B200", "-o", "json")

    plan = json.loads(out)
    assert code == 0
    assert (plan["weights"], plan["memory"]["weightBytes"]) == ("fp8", 688_586_727_753)


def test_a_directory_without_config_json_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--model", str(tmp_path), "--gpu", "B200")

    assert code == 2
    assert "without a config.json" in err


def test_an_unknown_attention_kind_is_refused_naming_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--model", str(HF_CONFIGS / "jamba-v0.1.json"), "--gpu", "B200")

    assert (code, out) == (2, "")
    assert "keys it could not interpret: model_type, attn_layer_period, attn_layer_offset, mamba_d_state" in err


def test_the_table_describes_each_layer_group(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "plan", "--model", str(HF_CONFIGS / "gemma-3-27b-it.json"), "--gpu", "B200")

    assert "10 full-attention layers (16 KV heads, head dim 128) + 52 sliding-window layers (window 1,024" in out
    assert "KV/TOKEN averages one 8,192-token sequence: sliding-window layers keep at most their window." in out
