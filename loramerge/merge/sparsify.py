"""Entry-wise sparsification and sign election (TIES, DARE), on any matrices: dense updates or core-space cores.

Where mergekit and the papers define a step differently, each choice is a setting (docs/merge.md, Conventions where the tools differ):
- kept_count: "round" keeps round(p n) entries (the nearest count to the density); "floor_min1" keeps
  max(1, int(p n)) (mergekit);
- dare_rescale: "inverse_density" divides the survivors by p (the DARE paper, PEFT); "l1" rescales them to the
  L1 norm the update had before dropping (mergekit's default rescale);
- tie_vote: a sign election whose sum or vote count is exactly 0 elects nothing ("none": no entry kept) or
  + ("positive": mergekit and PEFT);
- normalize_divisor: `normalize` divides by the summed |w| of the agreeing adapters ("absolute": a weighted
  mean, the TIES paper's disjoint mean when every w = 1) or by their signed sum, 0 replaced by 1 ("signed":
  mergekit); they differ only when a weight is negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# mergekit treats divisors and L1 norms below 1e-8 as zero (no rescale, divisor 1); we do the same.
NEGLIGIBLE = 1e-8


@dataclass(frozen=True)
class SparsifySettings:
    density: float = 0.5
    normalize: bool = False
    majority_sign: str = "total"  # elect by summed values ("total") or by vote count ("frequency")
    tie_vote: str = "none"
    normalize_divisor: str = "absolute"
    dare_rescale: str = "inverse_density"
    kept_count: str = "round"


def kept_entries(count: int, density: float, rule: str) -> int:
    return max(1, int(density * count)) if rule == "floor_min1" else int(round(density * count))


def magnitude_mask(matrix: torch.Tensor, density: float, kept_count: str = "round") -> torch.Tensor:
    """True for the `density` fraction of entries with the largest magnitude."""
    keep = kept_entries(matrix.numel(), density, kept_count)
    if keep >= matrix.numel():
        return torch.ones_like(matrix, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(matrix, dtype=torch.bool)
    magnitudes = matrix.abs().flatten()
    # kthvalue is O(n); topk over ~60M entries of a 14336 x 4096 module is several times slower.
    threshold = torch.kthvalue(magnitudes, magnitudes.numel() - keep + 1).values
    return matrix.abs() >= threshold


def dare_mask(matrix: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density` (DARE, Yu et al. 2024)."""
    return torch.rand(matrix.shape, generator=generator) < density


def drop_and_rescale(matrix: torch.Tensor, settings: SparsifySettings, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop entries at random, then rescale the survivors so the update keeps its size."""
    kept = matrix * dare_mask(matrix, settings.density, generator)
    if settings.dare_rescale == "inverse_density":
        return kept / settings.density  # unbiased: E[kept / p] = matrix
    before, after = float(matrix.abs().sum()), float(kept.abs().sum())
    return kept * (before / after) if before >= NEGLIGIBLE and after >= NEGLIGIBLE else kept


def trimmed(
    matrices: list[torch.Tensor], weights: list[float], settings: SparsifySettings, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """w_i * (M_i with all but its largest-magnitude `density` entries zeroed); deterministic (no generator)."""
    return [w * m * magnitude_mask(m, settings.density, settings.kept_count) for w, m in zip(weights, matrices)]


def dropped(
    matrices: list[torch.Tensor], weights: list[float], settings: SparsifySettings, generator: torch.Generator
) -> list[torch.Tensor]:
    """w_i * DARE(M_i), the random masks drawn in input order from one generator."""
    return [w * drop_and_rescale(m, settings, generator) for w, m in zip(weights, matrices)]


def elect_and_sum(weighted: list[torch.Tensor], weights: list[float], settings: SparsifySettings) -> torch.Tensor:
    """TIES sign election and disjoint sum (Yadav et al. 2023) over already weighted, pruned updates."""
    stacked = torch.stack(weighted)
    votes = torch.sign(stacked).sum(dim=0) if settings.majority_sign == "frequency" else stacked.sum(dim=0)
    elected = torch.sign(votes)
    if settings.tie_vote == "positive":
        elected = torch.where(elected == 0, torch.ones_like(elected), elected)
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    merged = (stacked * agree).sum(dim=0)
    if not settings.normalize:
        return merged
    column = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    if settings.normalize_divisor == "signed":
        divisor = (agree * column).sum(dim=0)
        return merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    divisor = (agree * column.abs()).sum(dim=0)
    return torch.where(divisor > 0, merged / divisor.clamp(min=torch.finfo(divisor.dtype).tiny), merged)


def weighted_sum(weighted: list[torch.Tensor], weights: list[float], settings: SparsifySettings) -> torch.Tensor:
    """Task arithmetic over already weighted updates; `normalize` divides by the summed weights."""
    merged = torch.stack(weighted).sum(dim=0)
    if not settings.normalize:
        return merged
    divisor = sum(weights) if settings.normalize_divisor == "signed" else sum(abs(w) for w in weights)
    return merged / divisor if abs(divisor) >= NEGLIGIBLE else merged


# sparsify(matrices, weights, settings, generator) -> weighted sparse matrices; combine(them, weights, settings)
Sparsifier = Callable[[list[torch.Tensor], list[float], SparsifySettings, torch.Generator], list[torch.Tensor]]
Combiner = Callable[[list[torch.Tensor], list[float], SparsifySettings], torch.Tensor]
