"""`conventions: mergekit` side by side with mergekit 0.1.5 itself, on materialised deltas (issue 23, item 4).

    .venv/bin/pip install --no-deps --target bench/out/mergekit mergekit==0.1.5
    PYTHONPATH=bench/out/mergekit .venv/bin/python bench/mergekit_compare.py

Each case merges three updates dW_i = B_i A_i (48 x 40, rank 4, seeded) with loramerge's dense method (the
registry function the engine calls, at full output rank so the recompression is exact) and with mergekit's
method on base + dW_i (base 0), and reports the largest relative Frobenius difference. Cases: every method both
tools have (ties, dare_ties, dare_linear, magnitude_prune = breadcrumbs at gamma 0), with every key left at its
default (mergekit's per-method defaults: that is what `conventions: mergekit` must reproduce) and with density,
normalize set; weights positive and negative; a module the third adapter lacks (zero delta in mergekit, a
rank-0 contribution in loramerge, as the engine passes it). DARE's random masks differ between the tools'
generators, so mergekit's torch.bernoulli is handed the masks loramerge drew, in mergekit's input order: the
comparison is of everything around the draw (rescale, election, divisor), not of two random streams.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from loramerge.merge.methods import METHODS, Contribution
from loramerge.merge.recipe import MergeRecipe, method_settings

OUT, IN, RANK = 48, 40, 4
PAIRS = {"ties": "ties", "dare_ties": "dare_ties", "dare_linear": "dare_linear", "magnitude_prune": "breadcrumbs"}
TARGET = 1e-5


def updates(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(RANK, IN, generator=generator), torch.randn(OUT, RANK, generator=generator)) for _ in range(3)]


@contextmanager
def bernoulli_masks(masks: list[torch.Tensor]) -> Iterator[None]:
    """mergekit draws each DARE mask with torch.bernoulli; give it loramerge's masks instead, in order."""
    original, queue = torch.bernoulli, iter(masks)
    torch.bernoulli = lambda probabilities, *args, **kwargs: next(queue).to(probabilities.dtype)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.bernoulli = original  # type: ignore[assignment]


def loramerge_merge(method: str, keys: dict[str, Any], weights: list[float], present: list[bool], seed: int) -> tuple:
    recipe = MergeRecipe(sources=[{"path": str(i)} for i in range(3)], method=method, conventions="mergekit", **keys)
    settings = method_settings(recipe).__class__(**{**vars(method_settings(recipe)), "rank": min(OUT, IN)})
    factors = updates(seed)
    contributions = [Contribution(a=a, b=b, scale=1.0, weight=w) for (a, b), w, p in zip(factors, weights, present) if p]
    absent = [Contribution(torch.zeros(0, IN), torch.zeros(OUT, 0), 1.0, w) for w, p in zip(weights, present) if not p]
    ordered = contributions + absent  # the engine's order: present inputs, then the absent ones
    draw = torch.Generator().manual_seed(99)
    masks = [torch.rand(OUT, IN, generator=draw) < settings.density for _ in ordered]  # what dropped() draws
    result = METHODS[method].function(ordered, settings, torch.Generator().manual_seed(99))
    # mergekit's input order: present and absent interleaved as the adapters are listed
    by_input, present_masks, absent_masks = [], iter(masks[: len(contributions)]), iter(masks[len(contributions) :])
    for p in present:
        by_input.append(next(present_masks) if p else next(absent_masks))
    return (result.b.double() @ result.a.double()), by_input, settings


def mergekit_merge(name: str, keys: dict[str, Any], weights: list[float], present: list[bool], seed: int, masks) -> torch.Tensor:
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorGroup

    method = registry.get(name)
    tensors = [torch.zeros(OUT, IN)] + [(b @ a) if p else torch.zeros(OUT, IN) for (a, b), p in zip(updates(seed), present)]
    ids = list(range(1, 4))
    params: dict[str, Any] = {spec.name: spec.default for spec in method.spec.parameters if spec.scope.value == "shared"}
    if "normalize" in keys:
        params["normalize"] = keys["normalize"]
    density = keys.get("density", next(spec.default for spec in method.spec.parameters if spec.name == "density"))
    params |= {"weight": dict(zip(ids, weights)), "density": dict.fromkeys(ids, density)}
    if name == "breadcrumbs":
        params["gamma"] = dict.fromkeys(ids, 0.0)
    group = TensorGroup.from_tensors(tensors, ids=[0, *ids], base_index=0)
    with bernoulli_masks([mask.float() for mask in masks]):
        return method.merge_group(group, **params).double()


def main() -> None:
    rows, worst = [], 0.0
    keysets = [{}, {"density": 0.3}, {"density": 0.7, "normalize": True}, {"density": 0.5, "normalize": False}]
    weightsets = [[1.0, 0.6, 0.8], [1.0, -0.4, 0.7]]
    presence = [[True, True, True], [True, True, False]]
    for (method, name), keys, weights, present in itertools.product(PAIRS.items(), keysets, weightsets, presence):
        ours, masks, settings = loramerge_merge(method, keys, weights, present, seed=3)
        theirs = mergekit_merge(name, keys, weights, present, 3, masks)
        error = float((ours - theirs).norm() / theirs.norm()) if theirs.norm() > 0 else float(ours.norm())
        worst = max(worst, error)
        rows.append(
            f"| {method} / {name} | {keys or 'defaults'} | {weights} | {'all' if all(present) else 'third lacks it'} "
            f"| density {settings.density}, normalize {settings.normalize} | {error:.1e} |"
        )
    print("| loramerge / mergekit | keys set | weights | module | resolved | relative difference |")
    print("|---|---|---|---|---|---:|")
    print("\n".join(rows))
    print(f"\n{len(rows)} cases; largest relative difference {worst:.1e} (target <= {TARGET:.0e})")
    sys.exit(0 if worst <= TARGET else 1)


if __name__ == "__main__":
    main()
