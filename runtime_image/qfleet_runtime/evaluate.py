"""`qfleet-runtime evaluate`: the quality of what `serve` would serve with --kv-format against --baseline-kv-format.

The candidate is the served plan itself (`stored_cache.build_cache`, as `serve` builds it): K and V really stored in
the format with the calibrated per-layer amax from <artifacts>/calibrate-report.json, the calibration's
`fallbackLayers` in bf16, and the per-entry precision fallbacks (entries above the calibrated amax kept in bf16).
Without a calibration report each tensor's own amax is used (`scales: dynamic`; serve refuses that). On the held-out
text shipped in the package (datasets.heldout_text, ~7k tokens, in windows of --eval-seq-len, or --eval-text) each
window is prefilled through a fresh cache of each plan, and `quality.compare` scores it. Measured: perplexity of both,
mean next-token KL(baseline || candidate) in nats per token, top-1 agreement, next-token accuracy of both, the
fallback rate of the windows, and a 32-item multiple-choice task.

score         = the candidate's next-token accuracy on the held-out text (0..1)
baselineScore = the baseline's
qualityDrop   = baselineScore - score   (0.01 is one point in a hundred; the operator's gate compares it, and the live
                gate computes the same difference on served prompts: qfleet_runtime.quality)

QFLEET_FAULT_QUALITY_DROP=x damages the candidate for real: Gaussian noise with standard deviation x * amax is added
to every K and V before they are stored (a seeded generator), as serve does, so the reported drop is measured.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from qfleet.formats import UnknownFormatError, kv_format

from . import kvstore, measure, model_recipe, quality
from .stored_cache import build_cache
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
        if name not in kvstore.STORED_FORMATS:
            raise StepError(f"KV format {name} cannot be evaluated: the qfleet backend cannot store it "
                            f"(one of {', '.join(kvstore.STORED_FORMATS)})")
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
    model.set_attn_implementation("sdpa")
    layers = measure.num_layers(model)

    calibration = Path(args.calibration or args.artifacts)
    amax, scales = _calibrated_amax(calibration, candidate_name, layers)
    bf16_layers = _fallback_layers(calibration) if candidate_name != "bf16" else frozenset()
    generator = torch.Generator().manual_seed(1234)

    def candidate():  # type: ignore[no-untyped-def]
        return build_cache(layers, candidate_name, amax, bf16_layers, noise=noise, generator=generator)

    def baseline():  # type: ignore[no-untyped-def]
        return build_cache(layers, baseline_name, amax if baseline_name == candidate_name else None)

    text = Path(args.eval_text).read_text() if getattr(args, "eval_text", None) else heldout_text()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if args.eval_tokens:
        ids = ids[: args.eval_tokens]
    window = max(2, args.eval_seq_len)
    total, entries, fallback_entries = quality.Score(), 0, 0
    for start in range(0, len(ids) - 1, window):
        x = ids[start: start + window]
        if len(x) < 2:
            break
        served = candidate()
        total += quality.score_text(model, x, served, baseline())
        more, more_fallback = served.write_log.take_entries()
        entries, fallback_entries = entries + more, fallback_entries + more_fallback
    n = total.scored
    if n == 0:
        raise StepError("the held-out text gave no tokens to score")
    task_base, task_cand = _task(model, tokenizer, baseline), _task(model, tokenizer, candidate)
    totals = {"nll_base": total.baseline_nll, "nll_cand": total.nll, "kl": total.kl_sum, "agree": total.agree,
              "acc_base": total.baseline_correct, "acc_cand": total.correct}

    baseline_score, score = totals["acc_base"] / n, totals["acc_cand"] / n
    metrics = {
        "tokens": n,
        "perplexity": {"baseline": _r(math.exp(totals["nll_base"] / n)), "candidate": _r(math.exp(totals["nll_cand"] / n))},
        "klMean": _r(totals["kl"] / n),
        "top1Agreement": _r(totals["agree"] / n),
        "nextTokenAccuracy": {"baseline": _r(baseline_score), "candidate": _r(score)},
        "task": {"items": len(task_items()), "baseline": _r(task_base), "candidate": _r(task_cand)},
        "lostTokens": total.lost,
        "gainedTokens": total.gained,
        "fallbackRate": _r(fallback_entries / entries) if entries else 0.0,
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
        "fallbackRate": metrics["fallbackRate"],
        "scales": scales,
        "tokens": n,
        "device": device_text,
    }
    if noise:
        summary["faultQualityNoise"] = noise
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
            "fallbackRate": "K/V entries of quantized layers kept at bf16 over all K/V entries of quantized layers",
            "candidate": "the served plan: the format, the calibration's fallbackLayers in bf16, per-entry fallbacks",
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


def _task(model, tokenizer, new_cache) -> float:  # type: ignore[no-untyped-def]
    """Share of items whose right answer has the highest log-likelihood (summed over its tokens), each choice scored
    through a fresh cache of the plan (`new_cache()`)."""
    import torch

    items = task_items()
    right = 0
    for item in items:
        context = tokenizer(item["context"], return_tensors="pt").input_ids[0]
        scores = []
        for choice in item["choices"]:
            full = tokenizer(item["context"] + choice, return_tensors="pt").input_ids[0]
            cut = len(context) if torch.equal(full[: len(context)], context) else len(context) - 1
            lp = quality.logprobs(model, full, new_cache())
            targets = full[cut:].to(lp.device)
            scores.append(float(lp[cut - 1: len(full) - 1].gather(1, targets[:, None]).sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    return right / len(items)
