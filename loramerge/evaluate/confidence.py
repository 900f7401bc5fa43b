"""Bootstrap confidence intervals for task scores and for paired differences between variants: pure functions.

A variant's score is the mean of per-item scores (exact match 0 or 100 for the iso-codes task). Two variants
scored on the same items are compared item by item: the difference of the means is the mean of the per-item
differences, and resampling the items (not the two variants independently) keeps the pairing, which
removes the items' own difficulty from the noise. With several training seeds the items are resampled once
for all seeds (the same items stay paired) and the seeds are resampled too, so the interval covers both
sources of variation: a two-level (seed x item) percentile bootstrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

RESAMPLES = 10_000  # percentile bootstrap: the 2.5 % and 97.5 % quantiles move by < 0.1 point between seeds
# A paired difference this many standard errors from zero is found 80 % of the time by a two-sided 5 % test:
# z(0.975) + z(0.80) = 1.960 + 0.842.
DETECTABLE_SE = 2.80


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    standard_error: float  # the bootstrap distribution's standard deviation

    @property
    def detectable(self) -> float:
        """The smallest true effect this design finds with 80 % power at the 5 % level (normal approximation)."""
        return DETECTABLE_SE * self.standard_error

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float]:
        return {
            "mean": round(self.mean, 3),
            "low": round(self.low, 3),
            "high": round(self.high, 3),
            "standard_error": round(self.standard_error, 3),
            "detectable": round(self.detectable, 3),
        }


def bootstrap_interval(scores: torch.Tensor, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap of the grand mean of scores [seeds, items] (or [items]): seeds and items resampled.

    Pass per-item differences (variant - reference on the same items) for a paired comparison.
    """
    table = scores.double().reshape(-1, scores.shape[-1]) if scores.dim() > 1 else scores.double()[None, :]
    seeds, items = table.shape
    if items == 0:
        raise ValueError("bootstrap_interval: no items")
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 2_000_000 // (seeds * items))  # bounds memory to ~16 MB of indices per chunk
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        item_rows = torch.randint(items, (count, items), generator=generator)
        seed_rows = (
            torch.randint(seeds, (count, seeds), generator=generator) if seeds > 1 else torch.zeros(count, 1, dtype=torch.long)
        )
        picked = table[seed_rows[:, :, None], item_rows[:, None, :]]  # [count, seeds, items]
        means[start : start + count] = picked.mean(dim=(1, 2))
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(float(table.mean()), low, high, float(means.std()))


def paired_scores(
    per_seed: Sequence[Mapping[int, float]], reference: Sequence[Mapping[int, float]], items: Sequence[int]
) -> torch.Tensor:
    """[seeds, items] of variant - reference per item (items named by any key, e.g. the data file's line)."""
    return torch.tensor(
        [[variant[item] - base[item] for item in items] for variant, base in zip(per_seed, reference, strict=True)]
    )
