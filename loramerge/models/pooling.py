"""Sentence vectors from one layer's hidden states: the masked mean the alignment loss and the probe share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, skip_first: bool) -> torch.Tensor:
    """Masked mean over each sequence's real tokens: [B, T, D], [B, T] -> [B, D] float32.

    skip_first drops each sequence's first real token (the BOS token on most tokenizers): its activation
    is so large that on small models it dominates the mean and every pair looks alike (cosine ~0.999
    on SmolLM2-135M). The first real token is located from the mask, so left padding works too. A
    sequence with a single real token keeps it rather than dividing by zero; an all-padding row pools
    to the zero vector.
    """
    mask = attention_mask.to(torch.float32)
    if skip_first:
        first = F.one_hot(mask.argmax(dim=1), num_classes=mask.shape[1]).to(torch.float32)
        more_than_one = (mask.sum(dim=1, keepdim=True) > 1).to(torch.float32)
        mask = mask - first * mask * more_than_one
    summed = torch.einsum("btd,bt->bd", hidden.to(torch.float32), mask)
    return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
