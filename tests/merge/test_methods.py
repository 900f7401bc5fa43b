"""Merge methods on hand-sized examples."""

from __future__ import annotations

import torch

from loramerge.merge.methods import METHODS, Contribution, MethodSettings
from loramerge.merge.sparsify import dare_mask, elect_and_sum, magnitude_mask


def test_magnitude_mask_keeps_the_largest_entries():
    matrix = torch.tensor([[0.1, -5.0], [3.0, -0.2]])
    assert magnitude_mask(matrix, 0.5).tolist() == [[False, True], [True, False]]
    assert magnitude_mask(matrix, 1.0).all()


def test_ties_elects_the_sign_of_the_sum_and_adds_agreeing_entries():
    first = torch.tensor([[2.0, -1.0, 0.0]])
    second = torch.tensor([[-1.0, -3.0, 4.0]])
    merged = elect_and_sum([first, second], [1.0, 1.0], MethodSettings())
    # column 0: sum +1 -> keep +2; column 1: both negative -> -4; column 2: only +4
    assert merged.tolist() == [[2.0, -4.0, 4.0]]
    normalized = elect_and_sum([first, second], [1.0, 1.0], MethodSettings(normalize=True))
    assert normalized.tolist() == [[2.0, -2.0, 4.0]]
    by_vote = elect_and_sum([first, second, second], [1.0] * 3, MethodSettings(majority_sign="frequency"))
    assert by_vote[0, 0].item() == -2.0  # two votes for minus outweigh the larger plus


def test_dare_keeps_about_density_of_the_entries():
    mask = dare_mask(torch.ones(200, 200), 0.3, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.3) < 0.01


def test_dare_linear_preserves_the_update_in_expectation():
    generator = torch.Generator().manual_seed(1)
    b, a = torch.randn(30, 4, generator=generator), torch.randn(4, 30, generator=generator)
    contribution = [Contribution(a=a, b=b, scale=1.0, weight=1.0)]
    mean = (
        sum(
            (lambda t: t.b @ t.a)(
                METHODS["dare_linear"].function(
                    contribution, MethodSettings(density=0.5, rank=30), torch.Generator().manual_seed(s)
                )
            )
            for s in range(200)
        )
        / 200
    )
    assert ((mean - b @ a).norm() / (b @ a).norm()).item() < 0.15


def test_cat_folds_weight_and_scale_into_b():
    a, b = torch.ones(2, 3), torch.ones(4, 2)
    merged = METHODS["cat"].function([Contribution(a=a, b=b, scale=0.5, weight=-2.0)], MethodSettings(), torch.Generator())
    assert torch.equal(merged.b @ merged.a, -(b @ a))


def test_finiteness_check_survives_an_overflowing_sum():
    from loramerge.merge.inputs import all_finite

    assert all_finite(torch.full((4,), 3e38))  # the sum overflows, the entries are finite
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))


# Dense references written from the methods' definitions (TIES: Yadav et al. 2023; DARE: Yu et al. 2024), not
# from loramerge's code: trim by sorting, elect by the sign of the sum, keep the entries that agree; DARE keeps
# each entry with probability density (a Bernoulli mask from the seeded stream) and rescales by 1/density.
def reference_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    keep = round(density * delta.numel())
    order = delta.abs().flatten().argsort(descending=True)
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    return delta * mask.view_as(delta)


def reference_elect(updates: list[torch.Tensor]) -> torch.Tensor:
    total = sum(updates)
    merged = torch.zeros_like(total)
    for update in updates:
        merged += torch.where((torch.sign(update) == torch.sign(total)) & (update != 0), update, torch.zeros_like(update))
    return merged


def reference_dare(deltas: list[torch.Tensor], weights: list[float], density: float, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [w * d * (torch.rand(d.shape, generator=generator) < density) / density for w, d in zip(weights, deltas)]


def test_sparsifying_methods_equal_dense_references_of_their_definitions():
    generator = torch.Generator().manual_seed(7)
    weights, scales = [0.7, -0.4, 1.1], [2.0, 0.5, 1.0]
    contributions = [
        Contribution(a=torch.randn(4, 20, generator=generator), b=torch.randn(24, 4, generator=generator), scale=s, weight=w)
        for w, s in zip(weights, scales)
    ]
    deltas = [c.scale * c.b @ c.a for c in contributions]
    density = 0.3
    references = {
        "magnitude_prune": sum(w * reference_trim(d, density) for w, d in zip(weights, deltas)),
        "ties": reference_elect([w * reference_trim(d, density) for w, d in zip(weights, deltas)]),
        "dare_linear": sum(reference_dare(deltas, weights, density, seed=3)),
        "dare_ties": reference_elect(reference_dare(deltas, weights, density, seed=3)),
    }
    settings = MethodSettings(rank=20, density=density)  # full rank: recompression keeps everything
    for method, expected in references.items():
        result = METHODS[method].function(contributions, settings, torch.Generator().manual_seed(3))
        actual = result.b @ result.a
        assert (actual - expected).norm() <= 1e-5 * expected.norm(), method
        plain_sum = sum(w * d for w, d in zip(weights, deltas))
        assert (actual - plain_sum).norm() > 0.1 * plain_sum.norm(), method  # sparsified: not the weighted sum
