"""Merge methods: small pure functions from per-module contributions to merged LoRA factors.

Each adapter i contributes w_i * s_i * B_i @ A_i to a module. Factor-space methods (cat, svd, linear)
never form the dense matrix; the dense sparsifying methods (ties, dare, magnitude pruning) are defined on the
dense update dW (pruning A and B separately is not invariant to B -> BG, A -> G^-1 A), so they form it for one
module at a time and recompress it to low rank. The core-space methods (core_methods.py) act on R x R cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from loramerge.merge.core_methods import (
    merge_core_dare,
    merge_core_ties,
    merge_iso_c,
    merge_iso_cts,
    merge_knots_ties,
    merge_tsv,
)
from loramerge.merge.core_space import core_space, from_core
from loramerge.merge.lowrank import (
    Truncation,
    dense_truncation,
    product_frobenius_norm,
)
from loramerge.merge.method_types import Contribution, MethodFunction, MethodSettings, default_rank
from loramerge.merge.sparsify import Combiner, Sparsifier, dropped, elect_and_sum, trimmed, weighted_sum

__all__ = ["METHODS", "Contribution", "MethodInfo", "MethodSettings", "OutputRank"]

# Recipe keys read by the method families; a key set for a method that does not read it is refused (recipe.py).
TRIM_KEYS = frozenset({"density", "kept_count"})
ELECT_KEYS = frozenset({"majority_sign", "tie_vote"})
NORMALIZE_KEYS = frozenset({"normalize", "normalize_divisor"})
DARE_KEYS = frozenset({"density", "dare_rescale", "seed"})


# How a method's output rank is known: "sum" of the input ranks (cat), the "first" input's rank (PEFT's linear,
# equal ranks), the "target" (--rank, else the sum, capped by the module's shape; svd and core space) unless an
# energy target is set, or only "after_work" (the dense methods' recompression). Known ranks let the writer
# stream each module as it is merged; the others are collected first (see plan.planned_rank).
OutputRank = Literal["sum", "first", "target", "after_work"]


@dataclass(frozen=True)
class MethodInfo:
    function: MethodFunction
    exact: bool
    truncates: bool
    sparsifies: bool  # forms the dense out x in update of each module
    summary: str
    keys: frozenset[str] = frozenset()
    normalize_default: bool = False  # TIES' disjoint mean: the TIES paper averages the agreeing entries
    output_rank: OutputRank = "after_work"


def _stack(contributions: list[Contribution]) -> tuple[torch.Tensor, torch.Tensor]:
    """[w_1 s_1 B_1, ..., w_n s_n B_n] and [A_1; ...; A_n]: their product is the exact weighted sum."""
    b = torch.cat([c.b.float() for c in contributions], dim=1)
    start = 0
    for c in contributions:  # scale in place: one pass less over B than scaling before the copy
        b[:, start : start + c.b.shape[1]] *= c.weight * c.scale
        start += c.b.shape[1]
    a = torch.cat([c.a.float() for c in contributions], dim=0)
    return b, a


def merge_cat(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    b, a = _stack(contributions)
    return Truncation(b=b, a=a, retained_energy=1.0, relative_error=0.0)


def merge_svd(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    """The weighted sum, re-factorised optimally (Eckart-Young) through the core-space route: orthonormal bases of
    the stacked factors from their R x R Gram matrices, the SVD of the one R x R core, the output as B @ (small)
    and (small) @ A. Per 14336 x 4096 module with four r=16 inputs, one thread: 27.5 ms by QR of the tall
    factors (the route before issue 25), 8.2 ms this way (bench/probes.py svd-module)."""
    b, a = _stack(contributions)
    space = core_space([(b, a, 1.0)])  # the weights and scales are in the stacked b already
    rank = default_rank(contributions, settings) if settings.energy is None else None
    return from_core(space, space.cores[0], rank, settings.energy)


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


def _dense_updates(contributions: list[Contribution]) -> list[torch.Tensor]:
    return [(c.b.float() @ c.a.float()) * c.scale for c in contributions]


def _recompress(
    merged: torch.Tensor, contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator
) -> Truncation:
    return dense_truncation(
        merged, default_rank(contributions, settings) if settings.energy is None else None, settings.energy, generator
    )


def _dense_method(sparsify: Sparsifier, combine: Combiner) -> MethodFunction:
    """Sparsify each dense update, combine them, recompress: ties, dare_*, magnitude_prune."""

    def run(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
        weights = [c.weight for c in contributions]
        merged = combine(sparsify(_dense_updates(contributions), weights, settings, generator), weights, settings)
        return _recompress(merged, contributions, settings, generator)

    return run


TIES_KEYS = TRIM_KEYS | ELECT_KEYS | NORMALIZE_KEYS


def _dense(sparsify: Sparsifier, combine: Combiner, summary: str, keys: frozenset[str], ties: bool = False) -> MethodInfo:
    function = _dense_method(sparsify, combine)
    return MethodInfo(function, exact=False, truncates=True, sparsifies=True, summary=summary, keys=keys, normalize_default=ties)


SUBSPACE_KEYS = frozenset({"subspace", "subspace_beta"})  # every core method: merge then truncate, or compress then merge


def _core(function: MethodFunction, summary: str, keys: frozenset[str], ties: bool = False) -> MethodInfo:
    return MethodInfo(
        function,
        exact=False,
        truncates=True,
        sparsifies=False,
        summary=summary,
        keys=keys | SUBSPACE_KEYS,
        normalize_default=ties,
        output_rank="target",  # works on R x R cores, as svd does
    )


METHODS: dict[str, MethodInfo] = {
    "cat": MethodInfo(
        merge_cat,
        exact=True,
        truncates=False,
        sparsifies=False,
        summary="exact weighted sum; output rank = sum of input ranks",
        output_rank="sum",
    ),
    "svd": MethodInfo(
        merge_svd,
        exact=False,
        truncates=True,
        sparsifies=False,
        summary="exact sum re-factorised to rank R or energy E; optimal (Eckart-Young) truncation",
        output_rank="target",
    ),
    "ties": _dense(trimmed, elect_and_sum, "trim to density, elect signs, average agreeing entries of dW", TIES_KEYS, ties=True),
    "dare_ties": _dense(
        dropped, elect_and_sum, "random drop + rescale, then TIES on dW", DARE_KEYS | ELECT_KEYS | NORMALIZE_KEYS, ties=True
    ),
    "dare_linear": _dense(dropped, weighted_sum, "random drop + rescale of dW, weighted sum", DARE_KEYS | NORMALIZE_KEYS),
    "magnitude_prune": _dense(
        trimmed, weighted_sum, "keep the largest entries of each dW, weighted sum", TRIM_KEYS | NORMALIZE_KEYS
    ),
    "tsv": _core(
        merge_tsv,
        "each task's top singular vectors, decorrelated across tasks (TSV-Merge)",
        frozenset({"alpha", "task_fraction"}),
    ),
    "iso_c": _core(merge_iso_c, "the sum with a flat (isotropic) spectrum (Iso-C)", frozenset({"alpha"})),
    "iso_cts": _core(
        merge_iso_cts, "common + task-specific singular directions, isotropic (Iso-CTS)", frozenset({"alpha", "common_fraction"})
    ),
    "knots_ties": _core(merge_knots_ties, "SVD-align the updates, TIES on the aligned coordinates (KnOTS)", TIES_KEYS, ties=True),
    "core_ties": _core(merge_core_ties, "TIES on the R x R cores", TIES_KEYS, ties=True),
    "core_dare": _core(merge_core_dare, "DARE drop + rescale of the cores, weighted sum", DARE_KEYS | NORMALIZE_KEYS),
    "linear": MethodInfo(
        merge_linear,
        exact=False,
        truncates=False,
        sparsifies=False,
        summary="PEFT add_weighted_adapter 'linear' compatibility: NOT the weighted sum (cross terms)",
        output_rank="first",
    ),
}
