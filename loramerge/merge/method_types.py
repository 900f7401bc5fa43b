"""What every merge method takes: one module's contributions and the recipe's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from loramerge.merge.lowrank import Truncation
from loramerge.merge.sparsify import SparsifySettings


@dataclass(frozen=True)
class Contribution:
    """One adapter's share of one module: weight * scale * b @ a."""

    a: torch.Tensor  # r x in
    b: torch.Tensor  # out x r
    scale: float
    weight: float


@dataclass(frozen=True)
class MethodSettings(SparsifySettings):
    rank: int | None = None  # output rank of truncating methods; default: the sum of input ranks
    energy: float | None = None  # or keep this fraction of ||dW||_F^2
    alpha: float = 1.0  # tsv, iso_c, iso_cts: scale of the merged update (the papers' alpha)
    task_fraction: float | None = None  # tsv: share of the rank each task keeps; None: 1 / number of inputs
    common_fraction: float = 0.8  # iso_cts: share of the rank given to the common subspace
    subspace: str = "merged"  # core methods with a rank: truncate the merge ("merged") or merge in a shared rank-r subspace
    subspace_beta: float = 0.25  # "shared": task balance of the subspace fit (Compress-then-Merge's README example)


MethodFunction = Callable[[list[Contribution], MethodSettings, torch.Generator], Truncation]


def default_rank(contributions: list[Contribution], settings: MethodSettings) -> int:
    return settings.rank if settings.rank is not None else sum(c.a.shape[0] for c in contributions)
