"""Merge methods computed entirely in each module's core space (see core_space.py): no out x in matrix.

Each input becomes an R_b x R_a core M_i (scale included); the methods combine the cores with the input
weights w_i, and the merged core is factorised back to a LoRA of rank <= R (or `rank` / `energy`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from loramerge.merge.core_space import CoreSpace, core_space, from_core
from loramerge.merge.lowrank import Truncation
from loramerge.merge.method_types import Contribution, MethodFunction, MethodSettings, default_rank
from loramerge.merge.sparsify import Combiner, Sparsifier, dropped, elect_and_sum, trimmed, weighted_sum
from loramerge.merge.spectral import (
    isotropic_common,
    isotropic_common_and_specific,
    knots_alignment,
    shared_subspace,
    task_singular_vectors,
)

Lift = tuple[torch.Tensor, torch.Tensor] | None  # the shared subspace (U, V) the cores were projected on


def _space(contributions: list[Contribution], settings: MethodSettings) -> tuple[CoreSpace, Lift, list[torch.Tensor]]:
    """The core space, and the weighted input cores (for the retained shares). With `subspace: shared` the cores
    are replaced by their r x r coordinates U^T M_i V in the shared rank-r subspace (Compress-then-Merge): the
    method then merges those, and `_finish` lifts the result back, rank r by construction."""
    space = core_space([(c.b, c.a, c.scale) for c in contributions])
    tasks = _weighted_cores(space, contributions)
    if settings.subspace != "shared" or settings.rank is None:
        return space, None, tasks
    left, right = shared_subspace(tasks, settings.rank, settings.subspace_beta)
    return replace(space, cores=[left.T @ core @ right for core in space.cores]), (left, right), tasks


def _weights(contributions: list[Contribution]) -> list[float]:
    return [c.weight for c in contributions]


def _dimension(space: CoreSpace) -> int:
    """min(out, in, R): the most non-zero singular values any merged update can have."""
    return min(space.cores[0].shape)


def _finish(
    space: CoreSpace,
    merged: torch.Tensor,
    contributions: list[Contribution],
    settings: MethodSettings,
    lift: Lift,
    tasks: list[torch.Tensor],
) -> Truncation:
    if lift is not None:
        merged = lift[0] @ merged @ lift[1].T
    rank = default_rank(contributions, settings) if settings.energy is None else None
    return from_core(space, merged, rank, settings.energy, tasks)


def _weighted_cores(space: CoreSpace, contributions: list[Contribution]) -> list[torch.Tensor]:
    return [c.weight * core for c, core in zip(contributions, space.cores)]


def merge_tsv(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    space, lift, tasks = _space(contributions, settings)
    merged = task_singular_vectors(
        _weighted_cores(space, contributions), _dimension(space), settings.task_fraction, settings.alpha
    )
    return _finish(space, merged, contributions, settings, lift, tasks)


def merge_iso_c(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    space, lift, tasks = _space(contributions, settings)
    merged = isotropic_common(_weighted_cores(space, contributions), settings.alpha)
    return _finish(space, merged, contributions, settings, lift, tasks)


def merge_iso_cts(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    space, lift, tasks = _space(contributions, settings)
    cores = _weighted_cores(space, contributions)
    merged = isotropic_common_and_specific(cores, _dimension(space), settings.common_fraction, settings.alpha)
    return _finish(space, merged, contributions, settings, lift, tasks)


def merge_knots_ties(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
    """KnOTS-TIES: TIES on the tasks' aligned coordinates V_i^T (here in core space: k x R_a), then U S V^T."""
    space, lift, tasks = _space(contributions, settings)
    shared, coordinates = knots_alignment(space.cores)
    weights = _weights(contributions)
    merged = shared @ elect_and_sum(trimmed(coordinates, weights, settings), weights, settings)
    return _finish(space, merged, contributions, settings, lift, tasks)


def _core_method(sparsify: Sparsifier, combine: Combiner) -> MethodFunction:
    """Sparsify the cores entry-wise and combine them: core_ties, core_dare."""

    def run(contributions: list[Contribution], settings: MethodSettings, generator: torch.Generator) -> Truncation:
        space, lift, tasks = _space(contributions, settings)
        weights = _weights(contributions)
        merged = combine(sparsify(space.cores, weights, settings, generator), weights, settings)
        return _finish(space, merged, contributions, settings, lift, tasks)

    return run


merge_core_ties = _core_method(trimmed, elect_and_sum)
merge_core_dare = _core_method(dropped, weighted_sum)
