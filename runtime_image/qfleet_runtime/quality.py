"""The quality figure, one definition offline and live.

On a text of n tokens the model predicts each next token twice: once with the served KV plan (`stored_cache`: the
format, the calibration's fallback layers in bf16, the per-entry fallbacks) and once with BF16 KV. A position is
*scored* when it has a next token in the text (n - 1 of them).

    accuracy         = share of scored positions whose argmax is the text's next token
    qualityDrop      = accuracy(BF16 KV) - accuracy(served plan)
                     = (lost - gained) / scored
    lost / gained    = positions right with BF16 KV only / right with the served plan only

`evaluate` sums these over the held-out text (its `qualityDrop`); `serve` sums them over the prompts of the sampled
requests (the prompt is the text: the generated tokens have no independent truth) and exports the three counts, from
which the live gate computes the same difference. KL(BF16 || served) and top-1 agreement ride along.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache


@dataclass
class Score:
    scored: int = 0
    correct: int = 0
    baseline_correct: int = 0
    lost: int = 0
    gained: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    nll: float = 0.0
    baseline_nll: float = 0.0

    def __iadd__(self, other: Score) -> Score:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def drop(self) -> float:
        return (self.lost - self.gained) / self.scored if self.scored else 0.0


@torch.inference_mode()
def logprobs(model, ids: list[int] | torch.Tensor, cache: Cache) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Log-probabilities (n, vocab) of the next token at every position, computed through `cache` (prefill)."""
    x = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)
    out = model(input_ids=x.reshape(1, -1).to(model.device), past_key_values=cache, use_cache=True)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def compare(reference: torch.Tensor, served: torch.Tensor, targets: torch.Tensor) -> Score:
    """The score of next-token log-probabilities (n, vocab), BF16 reference and served, against the next tokens
    `targets` (n,)."""
    targets = targets.to(reference.device)
    ref_top, served_top = reference.argmax(-1), served.argmax(-1)
    ref_right, served_right = ref_top == targets, served_top == targets
    kl = (reference.exp() * (reference - served)).sum(dim=-1).clamp(min=0.0)
    return Score(
        scored=len(targets), correct=int(served_right.sum()), baseline_correct=int(ref_right.sum()),
        lost=int((ref_right & ~served_right).sum()), gained=int((served_right & ~ref_right).sum()),
        agree=int((ref_top == served_top).sum()), kl_sum=float(kl.sum()),
        nll=-float(served.gather(1, targets[:, None]).sum()), baseline_nll=-float(reference.gather(1, targets[:, None]).sum()))


def score_text(model, ids: list[int] | torch.Tensor, served: Cache, reference: Cache) -> Score:  # type: ignore[no-untyped-def]
    """Both forward passes over `ids` (at least 2 tokens), each through a fresh cache, and their score."""
    x = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)
    if len(x) < 2:
        return Score()
    return compare(logprobs(model, x, reference)[:-1], logprobs(model, x, served)[:-1], x[1:])
