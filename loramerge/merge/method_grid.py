"""`--search methods`: a small default grid over merge methods and their scales, for choosing both on a dev set.

Why a grid and not a default: no scale fits every merge. With weight 1, `cat`, `tsv` and Iso keep the sum's
scale, which overshoots where adapters share a direction (three task adapters of one base: cat scored 0.0,
tsv 5.2, against 19.1 for ties' mean; BENCHMARKS.md, "Quality on real adapters with each method's defaults"), and the papers choose alpha on
validation data. The grid gives each method the scales that matter for n adapters, 1/n (a mean), 0.5 and 1 (the
sum), and TIES four densities at its default disjoint mean, 1 being sign election without trimming: 12 candidates
for 2 adapters, 16 for 3 or more. Density 1 joined the grid because the old grid's winner sat at its edge (0.7),
and on three task adapters' dev split density 1 scored as high (seed 0: 18.7 vs 17.6; seed 1: 18.3 vs 18.8); with
it, dev chose ties at density 1 in 2 of 3 seeds (BENCHMARKS.md, "Chosen on the dev split's six languages").
"""

from __future__ import annotations

from typing import Any

from loramerge.errors import LoramergeError
from loramerge.merge.methods import METHODS
from loramerge.merge.recipe import MergeRecipe

METHODS_SPEC = "methods"  # `--search methods`
SCALED = ("tsv", "iso_c", "iso_cts")  # methods whose `alpha` scales the merged update
TIES_DENSITIES = (0.3, 0.5, 0.7, 1.0)
# every method key: a candidate clears them all, then sets its own (a key one method reads is refused by another)
ALL_KEYS = sorted({key for info in METHODS.values() for key in info.keys} | {"normalize", "conventions"})


def scales(count: int) -> list[float]:
    """1/n (the mean), 0.5 and 1 (the sum), without repeats."""
    return sorted({1.0 / count, 0.5, 1.0})


def method_candidates(recipe: MergeRecipe) -> list[tuple[str, dict[str, Any]]]:
    """(label, recipe changes) for each default candidate. The sum is `cat`, or `svd` when the recipe asks for a
    rank or an energy (the best approximation of the weighted sum at that size)."""
    count = len(recipe.sources)
    if count < 2:
        raise LoramergeError(f"--search {METHODS_SPEC}: give at least two adapters; there is nothing to combine in one")
    cleared: dict[str, Any] = dict.fromkeys(ALL_KEYS)
    summed = "svd" if recipe.rank is not None or recipe.energy is not None else "cat"
    candidates = []
    for scale in scales(count):
        weights = {f"sources.{i}.weight": source.weight * scale for i, source in enumerate(recipe.sources)}
        candidates.append((f"{summed} x{scale:.3g}", {**cleared, "method": summed, **weights}))
    for density in TIES_DENSITIES:
        candidates.append((f"ties density={density:g}", {**cleared, "method": "ties", "density": density}))
    for method in SCALED:
        for scale in scales(count):
            candidates.append((f"{method} alpha={scale:.3g}", {**cleared, "method": method, "alpha": scale}))
    return candidates
