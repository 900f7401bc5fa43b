"""Merge methods: small pure functions from per-module contributions to merged LoRA factors.

Each adapter i contributes w_i * s_i * B_i @ A_i to a module. Factor-space methods (cat, svd, linear)
never form the dense matrix; sparsifying methods (ties, dare, magnitude pruning) are defined on the
dense update dW (pruning A and B separately is not invariant to B -> BG, A -> G^-1 A), so they form it
for one module at a time and recompress it to low rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from loramerge.merge.lowrank import (
    Truncation,
    choose_rank,
    dense_truncation,
    factor_svd,
    product_frobenius_norm,
    truncate,
)


@dataclass(frozen=True)
class Contribution:
    """One adapter's share of one module: weight * scale * b @ a."""

    a: torch.Tensor  # r x in
    b: torch.Tensor  # out x r
    scale: float
    weight: float


@dataclass(frozen=True)
class MethodSettings:
    rank: int | None = None  # output rank of truncating methods; default: the sum of input ranks
    energy: float | None = None  # or keep this fraction of ||dW||_F^2
    density: float = 0.5  # fraction of entries kept by the sparsifying methods
    normalize: bool = False  # ties: divide by the summed weights of the agreeing adapters
    majority_sign: str = "total"  # ties: elect the sign by summed values or by vote count


MethodFunction = Callable[[list[Contribution], MethodSettings, torch.Generator], Truncation]


@dataclass(frozen=True)
class MethodInfo:
    function: MethodFunction
    exact: bool
    truncates: bool
    sparsifies: bool
    summary: str


def _stack(contributions: list[Contribution]) -> tuple[torch.Tensor, torch.Tensor]:
    """[w_1 s_1 B_1, ..., w_n s_n B_n] and [A_1; ...; A_n]: their product is the exact weighted sum."""
    b = torch.cat([c.b.float() for c in contributions], dim=1)
    start = 0
    for c in contributions:  # scale in place: one pass less over B than scaling before the copy
        b[:, start : start + c.b.shape[1]] *= c.weight * c.scale
        start += c.b.shape[1]
    a = torch.cat([c.a.float() for c in contributions], dim=0)
    return b, a


def _default_rank(contributions: list[Contribution], settings: MethodSettings) -> int:
    return settings.rank if settings.rank is not None else sum(c.a.shape[0] for c in contributions)


def merge_cat(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    b, a = _stack(contributions)
    return Truncation(b=b, a=a, retained_energy=1.0, relative_error=0.0)


def merge_svd(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    b, a = _stack(contributions)
    spectrum = factor_svd(b, a)
    keep = choose_rank(spectrum.values, _default_rank(contributions, settings), settings.energy)
    return truncate(spectrum, keep)


def merge_linear(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    """PEFT's add_weighted_adapter(..., "linear"): A' = sum sign_i sqrt|w_i s_i| A_i, B' = sum sqrt|w_i s_i| B_i.

    B' A' contains cross terms B_i A_j, so this is NOT the weighted sum; the reported error says how far.
    """
    coefficients = [c.weight * c.scale for c in contributions]
    roots = [abs(k) ** 0.5 for k in coefficients]
    a = sum(math.copysign(root, k) * c.a.float() for k, root, c in zip(coefficients, roots, contributions))
    b = sum(root * c.b.float() for root, c in zip(roots, contributions))
    exact_b, exact_a = _stack(contributions)
    target = product_frobenius_norm(exact_b, exact_a)
    difference = product_frobenius_norm(torch.cat([b, -exact_b], dim=1), torch.cat([a, exact_a], dim=0))
    error = difference / target if target > 0 else 0.0
    return Truncation(b=b, a=a, retained_energy=None, relative_error=error)


def magnitude_mask(matrix: torch.Tensor, density: float) -> torch.Tensor:
    """True for the `density` fraction of entries with the largest magnitude."""
    keep = int(round(density * matrix.numel()))
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


def _dense_updates(contributions: list[Contribution]) -> list[torch.Tensor]:
    return [(c.b.float() @ c.a.float()) * c.scale for c in contributions]


def elect_and_sum(weighted: list[torch.Tensor], weights: list[float], settings: MethodSettings) -> torch.Tensor:
    """TIES sign election and disjoint sum (Yadav et al. 2023) over already weighted, pruned updates."""
    stacked = torch.stack(weighted)
    if settings.majority_sign == "frequency":
        elected = torch.sign(torch.sign(stacked).sum(dim=0))
    else:
        elected = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    merged = (stacked * agree).sum(dim=0)
    if settings.normalize:
        weight_column = torch.tensor(weights, dtype=stacked.dtype).abs().view(-1, *([1] * (stacked.dim() - 1)))
        divisor = (agree * weight_column).sum(dim=0)
        merged = torch.where(divisor > 0, merged / divisor.clamp(min=torch.finfo(divisor.dtype).tiny), merged)
    return merged


def _recompress(
    merged: torch.Tensor, contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator
) -> Truncation:
    return dense_truncation(
        merged, _default_rank(contributions, settings) if settings.energy is None else None, settings.energy, generator
    )


def merge_magnitude_prune(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    merged = sum(c.weight * d * magnitude_mask(d, settings.density) for c, d in zip(contributions, _dense_updates(contributions)))
    return _recompress(merged, contributions, settings, generator)


def merge_ties(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    weighted = [c.weight * d * magnitude_mask(d, settings.density) for c, d in zip(contributions, _dense_updates(contributions))]
    merged = elect_and_sum(weighted, [c.weight for c in contributions], settings)
    return _recompress(merged, contributions, settings, generator)


def _dare(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> list[torch.Tensor]:
    """Drop entries at random and rescale the survivors by 1/density so the expectation is unchanged."""
    return [
        c.weight * d * dare_mask(d, settings.density, generator) / settings.density
        for c, d in zip(contributions, _dense_updates(contributions))
    ]


def merge_dare_linear(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    merged = sum(_dare(contributions, settings, generator))
    return _recompress(merged, contributions, settings, generator)


def merge_dare_ties(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    merged = elect_and_sum(_dare(contributions, settings, generator), [c.weight for c in contributions], settings)
    return _recompress(merged, contributions, settings, generator)


METHODS: dict[str, MethodInfo] = {
    "cat": MethodInfo(
        merge_cat, exact=True, truncates=False, sparsifies=False, summary="exact weighted sum; output rank = sum of input ranks"
    ),
    "svd": MethodInfo(
        merge_svd,
        exact=False,
        truncates=True,
        sparsifies=False,
        summary="exact sum re-factorised to rank R or energy E; optimal (Eckart-Young) truncation",
    ),
    "ties": MethodInfo(
        merge_ties,
        exact=False,
        truncates=True,
        sparsifies=True,
        summary="trim to density, elect signs, sum agreeing entries of dW; recompressed",
    ),
    "dare_ties": MethodInfo(
        merge_dare_ties,
        exact=False,
        truncates=True,
        sparsifies=True,
        summary="random drop + rescale, then TIES sign election on dW; recompressed",
    ),
    "dare_linear": MethodInfo(
        merge_dare_linear,
        exact=False,
        truncates=True,
        sparsifies=True,
        summary="random drop + rescale of dW, weighted sum; recompressed",
    ),
    "magnitude_prune": MethodInfo(
        merge_magnitude_prune,
        exact=False,
        truncates=True,
        sparsifies=True,
        summary="keep the largest entries of each dW, weighted sum; recompressed",
    ),
    "linear": MethodInfo(
        merge_linear,
        exact=False,
        truncates=False,
        sparsifies=False,
        summary="PEFT add_weighted_adapter 'linear' compatibility: NOT the weighted sum (cross terms)",
    ),
}
