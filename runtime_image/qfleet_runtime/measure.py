"""Forward passes with a KV plan, and the distances between next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import kvquant


def tokenize(tokenizer, texts: Sequence[str], max_seq_len: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """One (1, n) tensor of token ids per text, truncated to max_seq_len; texts of fewer than 2 tokens dropped."""
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_seq_len).input_ids
        if ids.shape[1] >= 2:
            out.append(ids)
    return out


@torch.inference_mode()
def logprobs(model, ids: torch.Tensor, quantizer: kvquant.KvQuantizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Log-probabilities (n, vocab) of the next token at every position, computed in float32."""
    with kvquant.active(quantizer):
        logits = model(input_ids=ids.to(model.device), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def kl_per_token(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """KL(reference || candidate) in nats at every position, from log-probabilities."""
    return (reference.exp() * (reference - candidate)).sum(dim=-1).clamp(min=0.0)


def num_layers(model) -> int:  # type: ignore[no-untyped-def]
    return int(model.config.num_hidden_layers)
