"""Low-rank algebra against dense references."""

from __future__ import annotations

import pytest
import torch

from loramerge.merge.core_space import core_space
from loramerge.merge.lowrank import Spectrum, choose_rank, dense_truncation, product_frobenius_norm, truncate


def random_factors(out: int, rank: int, inner: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out, rank, generator=generator), torch.randn(rank, inner, generator=generator)


def core_spectrum(b: torch.Tensor, a: torch.Tensor) -> Spectrum:
    """The thin SVD of b @ a as merge_svd takes it: orthonormal bases from the Gram matrices, SVD of the core."""
    space = core_space([(b, a, 1.0)])
    u, s, vh = torch.linalg.svd(space.cores[0], full_matrices=False)
    left = (space.b.double() @ space.b_basis @ u).float()
    right = (vh @ space.a_basis.T @ space.a.double()).float()
    return Spectrum(left=left, values=s.float(), right=right)


@pytest.mark.parametrize("out,rank,inner", [(40, 6, 30), (10, 12, 50), (50, 12, 8)])
def test_the_core_route_svd_matches_the_dense_svd(out, rank, inner):
    """svd's route (core_space, then the SVD of the one R x R core) gives the dense matrix's spectrum."""
    b, a = random_factors(out, rank, inner)
    spectrum = core_spectrum(b, a)
    dense = torch.linalg.svdvals(b @ a)
    assert torch.allclose(spectrum.values, dense[: spectrum.values.numel()], rtol=1e-4, atol=1e-4)
    rebuilt = spectrum.left @ torch.diag(spectrum.values) @ spectrum.right
    assert torch.allclose(rebuilt, b @ a, atol=1e-4)


def test_truncation_reports_the_eckart_young_error():
    b, a = random_factors(30, 10, 20)
    truncation = truncate(core_spectrum(b, a), 4)
    singular = torch.linalg.svdvals((b @ a).double())
    optimum = (singular[4:] ** 2).sum().sqrt() / singular.norm()
    achieved = (truncation.b @ truncation.a - b @ a).norm() / (b @ a).norm()
    assert truncation.relative_error == pytest.approx(optimum.item(), rel=1e-4)
    assert achieved.item() == pytest.approx(optimum.item(), rel=1e-3)
    assert truncation.retained_energy == pytest.approx(1 - optimum.item() ** 2, rel=1e-4)


def test_choose_rank_by_energy():
    values = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert choose_rank(values, None, 9 / 14) == 1
    assert choose_rank(values, None, 0.9) == 2
    assert choose_rank(values, None, 1.0) == 3  # the zero singular value is never needed
    assert choose_rank(values, 2, None) == 2
    assert choose_rank(values, 10, None) == 4
    assert choose_rank(torch.zeros(3), None, 0.5) == 1


def test_product_norm_without_forming_the_product():
    b, a = random_factors(25, 5, 35)
    assert product_frobenius_norm(b, a) == pytest.approx((b @ a).norm().item(), rel=1e-5)


def test_randomized_truncation_of_a_dense_matrix_is_near_optimal():
    b, a = random_factors(200, 20, 150, seed=3)
    noise = 0.01 * torch.randn(200, 150, generator=torch.Generator().manual_seed(4))
    matrix = b @ a + noise
    truncation = dense_truncation(matrix, 20, None, torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(matrix.double())
    optimum = ((singular[20:] ** 2).sum().sqrt() / singular.norm()).item()
    achieved = ((truncation.b @ truncation.a - matrix).norm() / matrix.norm()).item()
    assert achieved == pytest.approx(truncation.relative_error, rel=1e-3)
    assert achieved <= optimum * 1.01


def test_dense_truncation_by_energy():
    b, a = random_factors(120, 8, 100, seed=5)
    b = b * torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])  # a decaying spectrum: 0.99 needs fewer than 8
    truncation = dense_truncation(b @ a, None, 0.99, torch.Generator().manual_seed(0))
    assert truncation.retained_energy >= 0.99 * (1 - 1e-6)
    energy = torch.cumsum(torch.linalg.svdvals((b @ a).double()) ** 2, dim=0)
    fewest = int((energy / energy[-1] < 0.99 * (1 - 1e-6)).sum().item()) + 1
    assert truncation.b.shape[1] == fewest < 8  # the fewest ranks, not all 8
