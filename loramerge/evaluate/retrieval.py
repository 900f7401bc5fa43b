"""Cross-lingual retrieval scores: pure functions of sentence vectors.

For parallel sentences x_i (language a) and y_i (language b), retrieval is correct when y_i is the
best-scoring candidate for x_i among all y. Two scores:
- cosine similarity;
- ratio margin (Artetxe & Schwenk 2019): cos(x, y) divided by the mean cosine of x to its k nearest
  candidates and of y to its k nearest queries, averaged; it discounts "hub" vectors that are close
  to everything, which plain cosine over-retrieves (the paper's analysis uses it, k = 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MARGIN_NEIGHBOURS = 4


def cosine_matrix(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return F.normalize(queries.double(), dim=-1) @ F.normalize(candidates.double(), dim=-1).T


def ratio_margin_matrix(similarity: torch.Tensor, k: int = MARGIN_NEIGHBOURS) -> torch.Tensor:
    """score(x_i, y_j) = cos(x_i, y_j) / ((mean of x_i's k best cosines + mean of y_j's k best) / 2)."""
    k_rows = min(k, similarity.shape[1])
    k_cols = min(k, similarity.shape[0])
    query_density = similarity.topk(k_rows, dim=1).values.mean(dim=1)  # [N]
    candidate_density = similarity.topk(k_cols, dim=0).values.mean(dim=0)  # [M]
    return similarity / ((query_density[:, None] + candidate_density[None, :]) / 2)


def top1_accuracy(scores: torch.Tensor) -> float:
    """Fraction of rows whose best column is their own index (row i's translation is column i)."""
    hits = scores.argmax(dim=1) == torch.arange(scores.shape[0], device=scores.device)
    return float(hits.double().mean().item())


def retrieval_accuracy(queries: torch.Tensor, candidates: torch.Tensor, k: int = MARGIN_NEIGHBOURS) -> dict[str, float]:
    """Top-1 accuracy of queries[i] -> candidates[i] by cosine and by ratio margin."""
    similarity = cosine_matrix(queries, candidates)
    return {"cosine": top1_accuracy(similarity), "margin": top1_accuracy(ratio_margin_matrix(similarity, k))}
