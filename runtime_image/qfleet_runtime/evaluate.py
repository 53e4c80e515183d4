"""`qfleet-runtime evaluate`: the quality of the model with its KV cache in --kv-format against --baseline-kv-format.

On the held-out text shipped in the package (datasets.heldout_text, ~7k tokens, in windows of --eval-seq-len) the
model runs twice per window, once with the baseline KV format and once with the candidate's (qfleet kvquant fake
quantization, with the per-layer amax from <artifacts>/calibrate-report.json when calibration wrote one, else the
tensor's own amax). Measured: perplexity of both, mean next-token KL(baseline || candidate) in nats per token,
top-1 agreement, next-token accuracy of both, and a 32-item multiple-choice task. With --bf16-fallback-layers (never
rendered by the operator) the calibration's fallbackLayers keep bf16 KV in the candidate, as `serve` stores them.

score         = the candidate's next-token accuracy on the held-out text (0..1)
baselineScore = the baseline's
qualityDrop   = baselineScore - score   (0.01 is one point in a hundred; the operator's gate compares it)

QFLEET_FAULT_QUALITY_DROP=x damages the candidate for real: Gaussian noise with standard deviation x * amax is added
to every K and V after quantization (a seeded generator), so the reported drop is measured, not copied from x.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from qfleet.formats import UnknownFormatError, kv_format

from . import kvquant, measure, model_recipe
from .calibrate import REPORT as CALIBRATION_REPORT
from .common import StepError, Timer, device, fault_quality_noise, resolve_model, write_report
from .datasets import heldout_text, task_items

REPORT = "evaluate-report.json"
DEFAULT_EVAL_SEQ_LEN = 512


def run(args: argparse.Namespace) -> dict[str, Any]:
    timer = Timer()
    names = []
    for name in (args.kv_format, args.baseline_kv_format):
        try:
            names.append(kv_format(name).name)
        except UnknownFormatError as error:
            raise StepError(str(error)) from None
        if name not in kvquant.FAKE_QUANT_FORMATS:
            raise StepError(f"KV format {name} cannot be evaluated: no fake quantization for it "
                            f"(one of {', '.join(kvquant.FAKE_QUANT_FORMATS)})")
    candidate_name, baseline_name = names
    noise = fault_quality_noise()

    import torch

    torch.manual_seed(0)
    torch_device, device_text = device()
    model_path = resolve_model(args.model_uri, args.model_revision)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    model, tokenizer = model_recipe.load(model_path)
    model.to(torch_device)
    kvquant.install(model)
    layers = measure.num_layers(model)

    calibration = Path(args.calibration or args.artifacts)
    amax, scales = _calibrated_amax(calibration, candidate_name, layers)
    bf16_layers = _fallback_layers(calibration) if getattr(args, "bf16_fallback_layers", False) else frozenset()
    candidate_plans = {i: kvquant.LayerPlan("bf16") if i in bf16_layers else
                       kvquant.LayerPlan(candidate_name, *(amax[i] if amax else (None, None)))
                       for i in range(layers)}
    generator = torch.Generator(device=torch_device).manual_seed(1234)
    candidate = kvquant.KvQuantizer(plans=candidate_plans, noise=noise, generator=generator)
    baseline = kvquant.KvQuantizer(default=kvquant.LayerPlan(baseline_name))

    ids = tokenizer(heldout_text(), return_tensors="pt").input_ids[0]
    if args.eval_tokens:
        ids = ids[: args.eval_tokens]
    window = max(2, args.eval_seq_len)
    totals = {"tokens": 0, "nll_base": 0.0, "nll_cand": 0.0, "kl": 0.0, "agree": 0, "acc_base": 0, "acc_cand": 0}
    for start in range(0, len(ids) - 1, window):
        x = ids[start: start + window].unsqueeze(0)
        if x.shape[1] < 2:
            break
        ref = measure.logprobs(model, x, baseline)
        cand = measure.logprobs(model, x, candidate)
        targets = x[0, 1:].to(ref.device)
        ref_p, cand_p = ref[:-1], cand[:-1]
        totals["tokens"] += len(targets)
        totals["nll_base"] -= float(ref_p.gather(1, targets[:, None]).sum())
        totals["nll_cand"] -= float(cand_p.gather(1, targets[:, None]).sum())
        totals["kl"] += float(measure.kl_per_token(ref_p, cand_p).sum())
        totals["agree"] += int((ref_p.argmax(-1) == cand_p.argmax(-1)).sum())
        totals["acc_base"] += int((ref_p.argmax(-1) == targets).sum())
        totals["acc_cand"] += int((cand_p.argmax(-1) == targets).sum())
    n = totals["tokens"]
    if n == 0:
        raise StepError("the held-out text gave no tokens to score")
    task_base, task_cand = _task(model, tokenizer, baseline), _task(model, tokenizer, candidate)

    baseline_score, score = totals["acc_base"] / n, totals["acc_cand"] / n
    metrics = {
        "tokens": n,
        "perplexity": {"baseline": _r(math.exp(totals["nll_base"] / n)), "candidate": _r(math.exp(totals["nll_cand"] / n))},
        "klMean": _r(totals["kl"] / n),
        "top1Agreement": _r(totals["agree"] / n),
        "nextTokenAccuracy": {"baseline": _r(baseline_score), "candidate": _r(score)},
        "task": {"items": len(task_items()), "baseline": _r(task_base), "candidate": _r(task_cand)},
    }
    summary: dict[str, Any] = {
        "kvFormat": candidate_name,
        "baselineKvFormat": baseline_name,
        "score": _r(score),
        "baselineScore": _r(baseline_score),
        "qualityDrop": _r(baseline_score - score),
        "kl": metrics["klMean"],
        "perplexity": metrics["perplexity"]["candidate"],
        "baselinePerplexity": metrics["perplexity"]["baseline"],
        "top1Agreement": metrics["top1Agreement"],
        "taskScore": metrics["task"]["candidate"],
        "baselineTaskScore": metrics["task"]["baseline"],
        "scales": scales,
        "tokens": n,
        "device": device_text,
    }
    if noise:
        summary["faultQualityNoise"] = noise
    if bf16_layers:
        summary["bf16Layers"] = sorted(bf16_layers)
    report = summary | {
        "step": "evaluate",
        "revision": args.revision,
        "model": {"uri": args.model_uri, "revision": args.model_revision, "path": str(model_path)},
        "evalSeqLen": window,
        "metrics": metrics,
        "definitions": {
            "score": "next-token top-1 accuracy of the candidate on the held-out text",
            "qualityDrop": "baselineScore - score",
            "kl": "mean KL(baseline || candidate) of the next-token distribution, nats per token",
            "scales": "calibrated: per-layer amax from calibrate-report.json; dynamic: each tensor's own amax",
        },
    }
    report_path = write_report(artifacts, REPORT, report | {"durationSeconds": timer.seconds})
    summary["path"] = str(report_path)
    summary["durationSeconds"] = timer.seconds
    return summary


def _r(value: float) -> float:
    return round(float(value), 6)


def _calibrated_amax(artifacts: Path, name: str, layers: int) -> tuple[list[tuple[float, float]] | None, str]:
    if name == "bf16":
        return None, "none"
    path = artifacts / CALIBRATION_REPORT
    if not path.is_file():
        return None, "dynamic"
    report = json.loads(path.read_text())
    rows = report.get("layers") or []
    if report.get("kvFormat") != name or len(rows) != layers or any(r.get("kAmax") is None for r in rows):
        raise StepError(f"{path} does not hold a {name} calibration of this model's {layers} layers")
    return [(float(r["kAmax"]), float(r["vAmax"])) for r in rows], "calibrated"


def _fallback_layers(artifacts: Path) -> frozenset[int]:
    """The calibration report's fallbackLayers (what serve stores in bf16); none without a report."""
    path = artifacts / CALIBRATION_REPORT
    if not path.is_file():
        return frozenset()
    return frozenset(int(i) for i in json.loads(path.read_text()).get("fallbackLayers") or ())


def _task(model, tokenizer, quantizer: kvquant.KvQuantizer) -> float:  # type: ignore[no-untyped-def]
    """Share of items whose right answer has the highest log-likelihood (summed over its tokens)."""
    import torch

    items = task_items()
    right = 0
    for item in items:
        context = tokenizer(item["context"], return_tensors="pt").input_ids[0]
        scores = []
        for choice in item["choices"]:
            full = tokenizer(item["context"] + choice, return_tensors="pt").input_ids[0]
            cut = len(context) if torch.equal(full[: len(context)], context) else len(context) - 1
            lp = measure.logprobs(model, full.unsqueeze(0), quantizer)
            targets = full[cut:].to(lp.device)
            scores.append(float(lp[cut - 1: len(full) - 1].gather(1, targets[:, None]).sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    return right / len(items)
