"""`qfleet-runtime calibrate`: ModelOpt max calibration of the KV quantizers, HF checkpoint export, per-layer report.

1. Load the model (float32 compute), run `mtq.quantize` with the format's KV preset merged into a disable-all config
   (`mtq.update_quant_cfg_with_kv_cache_quant`), over the calibration samples: every k_bmm/v_bmm quantizer gets its
   amax (max |x| of the keys/values after RoPE).
2. Export with `export_hf_checkpoint` (fp8, nvfp4: `kv_cache_quant_algo` and per-layer k_scale/v_scale) into
   <artifacts>/calibrated/ (a temporary directory, renamed when complete). ModelOpt 0.47 calibrates INT8 KV but its
   export rejects it, so for int8 the runtime writes the checkpoint itself (see `_export_int8`).
   The samples: with --recent-sample, round(samples * share) of them are the most recent distinct prompts of the
   serving pods' sample (`prompt_sample`), the rest come from --dataset; `datasetMix` records the split.
3. Analysis on a fresh copy of the model with qfleet's own KV fake quantization (kvquant) and the calibrated amax:
   per layer, the relative error of K and V and the mean next-token KL (nats/token, against the bf16-KV model) when
   only that layer's KV is quantized; layers above --max-layer-kl are the fallback layers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from qfleet.formats import UnknownFormatError, kv_format

from . import kvquant, measure, model_recipe, prompt_sample
from .common import EXIT_NOT_IMPLEMENTED, StepError, Timer, device, resolve_model, write_report
from .datasets import calibration_set

REPORT = "calibrate-report.json"
CHECKPOINT = "calibrated"
DEFAULT_ANALYSIS_SAMPLES = 8
INT8_KV_CFG = [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}}]
MAXBOUND = {"fp8": 448.0, "int8": 127.0, "nvfp4": 6.0 * 448.0}
"""k_scale = amax / maxbound, as ModelOpt exports it (FP8 and NVFP4) and TensorRT-LLM reads it."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    timer = Timer()
    try:
        fmt = kv_format(args.kv_format)
    except UnknownFormatError as error:
        raise StepError(str(error)) from None
    if fmt.name not in kvquant.FAKE_QUANT_FORMATS:
        raise StepError(f"KV format {fmt.name} has no calibration path (ModelOpt and TensorRT-LLM have no KV "
                        f"support for it)")
    if args.weights != "bf16":
        raise StepError(f"weights {args.weights}: weight quantization is not implemented in this runtime version "
                        "(it calibrates the KV cache of bf16 weights)", exit_code=EXIT_NOT_IMPLEMENTED)
    if args.samples < 1 or args.max_seq_len < 2:
        raise StepError("--samples must be at least 1 and --max-seq-len at least 2")
    if not 0.0 <= args.recent_share <= 1.0:
        raise StepError(f"--recent-share must be between 0 and 1 (got {args.recent_share})")
    max_layer_kl = Decimal(args.max_layer_kl) if args.max_layer_kl is not None else None

    import torch

    torch.manual_seed(0)
    torch_device, device_text = device()
    model_path = resolve_model(args.model_uri, args.model_revision)
    data = calibration_set(args.dataset, args.samples)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)

    model, tokenizer = model_recipe.load(model_path)
    model.to(torch_device)
    recent, recent_report = recent_samples(args, tokenizer)
    data = data.first(args.samples - len(recent))
    configured = measure.tokenize(tokenizer, data.texts, args.max_seq_len)
    ids = [torch.tensor([list(r)]) for r in recent] + configured
    if not ids:
        raise StepError(f"calibration dataset {args.dataset!r} gave no sample of 2 tokens or more")
    layers = measure.num_layers(model)

    calib_timer = Timer()
    modelopt_version, amax = None, None
    if fmt.name != "bf16":
        modelopt_version, amax = _modelopt_calibrate(model, fmt.name, fmt.modelopt_config, ids)
    calibration_seconds = calib_timer.seconds

    export_timer = Timer()
    checkpoint = artifacts / CHECKPOINT
    if amax is not None:
        _publish(checkpoint, lambda tmp: _export(model, tokenizer, fmt.name, amax, model_path, tmp))
    export_seconds = export_timer.seconds
    del model

    analysis_timer = Timer()
    analysis_ids = ids[: args.analysis_samples]
    per_layer, model_kl = _analyse(model_path, torch_device, fmt.name, amax, analysis_ids, layers)
    analysis_seconds = analysis_timer.seconds

    worst = max(range(layers), key=lambda i: per_layer[i]["kl"])
    fallback = [i for i in range(layers) if max_layer_kl is not None and Decimal(str(per_layer[i]["kl"])) > max_layer_kl]
    for i in range(layers):
        per_layer[i]["fallback"] = i in fallback

    summary: dict[str, Any] = {
        "kvFormat": fmt.name,
        "kvCacheQuantAlgo": fmt.trtllm_kv_cache_quant_algo,
        "worstLayer": worst,
        "worstLayerKL": _sig(per_layer[worst]["kl"]),
        "modelKL": _sig(model_kl),
        "fallbackLayers": fallback,
        "samples": len(ids),
        "tokens": int(sum(x.shape[1] for x in ids)),
        "dataset": data.requested,
        "datasetUsed": data.used,
        "datasetHash": data.digest,
        "datasetMix": {"configured": len(configured), "recent": len(recent)},
        "modelOptVersion": modelopt_version,
        "device": device_text,
        "path": str(checkpoint) if amax is not None else None,
    }
    if data.note:
        summary["datasetNote"] = data.note
    report = summary | {
        "step": "calibrate",
        "revision": args.revision,
        "model": {"uri": args.model_uri, "revision": args.model_revision, "path": str(model_path)},
        "weights": args.weights,
        "maxSeqLen": args.max_seq_len,
        "maxLayerKL": args.max_layer_kl,
        "recentSample": recent_report,
        "analysis": {"samples": len(analysis_ids), "tokens": int(sum(x.shape[1] for x in analysis_ids)),
                     "method": "qfleet kvquant fake quantization with the calibrated amax; KL(bf16 KV || "
                               "quantized KV) of the next-token distribution, mean nats per token"},
        "timings": {"calibrationSeconds": calibration_seconds, "exportSeconds": export_seconds,
                    "analysisSeconds": analysis_seconds},
        "layers": per_layer,
    }
    report_path = write_report(artifacts, REPORT, report | {"durationSeconds": timer.seconds})
    summary["report"] = str(report_path)
    summary["durationSeconds"] = timer.seconds
    return summary


def recent_samples(args: argparse.Namespace, tokenizer) -> tuple[tuple[tuple[int, ...], ...], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The calibration samples taken from the serving prompt sample, most recent first, and what the report says of
    them. No directory, an empty one or a share of 0: none (the dataset alone), never an error. Logs counts only."""
    wanted = prompt_sample.recent_wanted(args.samples, args.recent_share) if args.recent_sample else 0
    report: dict[str, Any] = {"dir": args.recent_sample, "share": args.recent_share, "wanted": wanted}
    if not args.recent_sample:
        return (), report
    entries = prompt_sample.read_dir(Path(args.recent_sample), time.time(), args.recent_retention)
    chosen = prompt_sample.select(entries, wanted, args.max_seq_len, prompt_sample.tokenizer_fingerprint(tokenizer))
    report |= {"retentionSeconds": args.recent_retention, "entries": len(entries), "usable": chosen.usable,
               "otherTokenizer": chosen.other_tokenizer, "used": len(chosen.ids),
               "hash": prompt_sample.digest(chosen.ids) if chosen.ids else None}
    print(f"calibrate: recent sample {args.recent_sample}: {len(chosen.ids)} of {wanted} wanted samples from "
          f"{len(entries)} fresh entries ({chosen.usable} distinct usable, {chosen.other_tokenizer} of another "
          f"tokenizer skipped)", file=sys.stderr, flush=True)
    return chosen.ids, report


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def _modelopt_calibrate(model, name: str, preset: str | None, ids) -> tuple[str, list[tuple[float, float]]]:  # type: ignore[no-untyped-def]
    import modelopt
    import modelopt.torch.quantization as mtq
    import torch

    kv_cfg = getattr(mtq, preset)["quant_cfg"] if preset else INT8_KV_CFG
    config = mtq.update_quant_cfg_with_kv_cache_quant({"quant_cfg": None}, kv_cfg)

    def forward_loop(m) -> None:  # type: ignore[no-untyped-def]
        with torch.inference_mode():
            for x in ids:
                m(input_ids=x.to(m.device), use_cache=False)

    mtq.quantize(model, config, forward_loop)
    amax = []
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        k_amax = getattr(attention.k_bmm_quantizer, "amax", None)
        v_amax = getattr(attention.v_bmm_quantizer, "amax", None)
        if k_amax is None or v_amax is None:
            raise StepError(f"ModelOpt left layer {index}'s KV quantizers without an amax ({name})")
        amax.append((float(k_amax.float().max()), float(v_amax.float().max())))
    return modelopt.__version__, amax


def _publish(target: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Writes a directory under a temporary name beside `target`, then swaps it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export(model, tokenizer, name: str, amax, model_path: Path, out: Path) -> None:  # type: ignore[no-untyped-def]
    if name == "int8":
        _export_int8(name, amax, model_path, out)
    else:
        import torch
        from modelopt.torch.export import export_hf_checkpoint

        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(out))
    tokenizer.save_pretrained(out)


def _export_int8(name: str, amax, model_path: Path, out: Path) -> None:  # type: ignore[no-untyped-def]
    """ModelOpt 0.47's export asserts on INT8 KV ("Invalid KV cache quantization format"), so: the bf16 weights as
    they are, hf_quant_config.json with kv_cache_quant_algo INT8 (ModelOpt's layout), and the per-layer
    k_scale/v_scale (amax / 127) in kv_scales.safetensors under ModelOpt's names. Not loaded by TensorRT-LLM here."""
    import json

    import torch
    from safetensors.torch import save_file

    for item in model_path.iterdir():
        if item.is_file() and item.name != "hf_quant_config.json":
            shutil.copy2(item, out / item.name)
    scales = {}
    for index, (k_amax, v_amax) in enumerate(amax):
        scales[f"model.layers.{index}.self_attn.k_proj.k_scale"] = torch.tensor(k_amax / MAXBOUND[name])
        scales[f"model.layers.{index}.self_attn.v_proj.v_scale"] = torch.tensor(v_amax / MAXBOUND[name])
    save_file(scales, str(out / "kv_scales.safetensors"))
    quant = {"producer": {"name": "qfleet-runtime", "version": "0.1.0"},
             "quantization": {"quant_algo": None, "kv_cache_quant_algo": "INT8", "exclude_modules": ["lm_head"]}}
    (out / "hf_quant_config.json").write_text(json.dumps(quant, indent=4) + "\n")


def _analyse(model_path: Path, torch_device: str, name: str, amax, ids, layers: int):  # type: ignore[no-untyped-def]
    import torch

    model, _ = model_recipe.load(model_path)
    model.to(torch_device)
    kvquant.install(model)
    plans = {i: kvquant.LayerPlan(name, *(amax[i] if amax else (None, None))) for i in range(layers)}
    stats = {i: {"k_err": 0.0, "k_norm": 0.0, "v_err": 0.0, "v_norm": 0.0, "k_max": 0.0, "v_max": 0.0}
             for i in range(layers)}

    def capture(layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        s, plan = stats[layer], plans[layer]
        for tag, x, a in (("k", key, plan.k_amax), ("v", value, plan.v_amax)):
            q = kvquant.fake_quantize(x, name, a)
            s[f"{tag}_err"] += float((q.float() - x.float()).pow(2).sum())
            s[f"{tag}_norm"] += float(x.float().pow(2).sum())
            s[f"{tag}_max"] = max(s[f"{tag}_max"], float(x.abs().max()))

    kl_sum = [0.0] * layers
    model_kl_sum, tokens = 0.0, 0
    baseline = kvquant.KvQuantizer()
    for x in ids:
        reference = measure.logprobs(model, x, kvquant.KvQuantizer(capture=capture))
        for i in range(layers):
            only = kvquant.KvQuantizer(plans={i: plans[i]}, default=baseline.default)
            kl_sum[i] += float(measure.kl_per_token(reference, measure.logprobs(model, x, only)).sum())
        every = kvquant.KvQuantizer(plans=plans)
        model_kl_sum += float(measure.kl_per_token(reference, measure.logprobs(model, x, every)).sum())
        tokens += x.shape[1]

    per_layer = []
    for i in range(layers):
        s = stats[i]
        row: dict[str, Any] = {
            "layer": i,
            "kAmax": _sig(amax[i][0]) if amax else None,
            "vAmax": _sig(amax[i][1]) if amax else None,
            "kScale": _sig(amax[i][0] / MAXBOUND[name]) if amax else None,
            "vScale": _sig(amax[i][1] / MAXBOUND[name]) if amax else None,
            "kObservedMax": _sig(s["k_max"]),
            "vObservedMax": _sig(s["v_max"]),
            "kRelError": _sig((s["k_err"] / s["k_norm"]) ** 0.5) if s["k_norm"] else 0.0,
            "vRelError": _sig((s["v_err"] / s["v_norm"]) ** 0.5) if s["v_norm"] else 0.0,
            "kl": _sig(kl_sum[i] / tokens),
        }
        per_layer.append(row)
    return per_layer, model_kl_sum / tokens
