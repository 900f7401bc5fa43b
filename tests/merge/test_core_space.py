"""Core-space methods against dense references written from the papers' equations, in float64.

The references work on the dense out x in updates dW_i = s_i B_i A_i. LoRA merges have at most R = sum of
input ranks non-zero singular directions, so sizes count in D = min(out, in, R) and directions with a zero
singular value are dropped (docs/merge.md, Methods); everything else follows the papers.
"""

from __future__ import annotations

import pytest
import torch

from loramerge.merge.core_space import core_space, from_core
from loramerge.merge.methods import METHODS, Contribution, MethodSettings

OUT, IN = 48, 40


def inputs(ranks: list[int], weights: list[float], seed: int = 0) -> list[Contribution]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Contribution(a=torch.randn(r, IN, generator=generator), b=torch.randn(OUT, r, generator=generator), scale=s, weight=w)
        for r, w, s in zip(ranks, weights, [0.5, 2.0, 1.0, 1.5])
    ]


def dense_updates(contributions: list[Contribution]) -> list[torch.Tensor]:
    return [c.scale * c.b.double() @ c.a.double() for c in contributions]


def merged(method: str, contributions: list[Contribution], **settings: object) -> torch.Tensor:
    result = METHODS[method].function(contributions, MethodSettings(**settings), torch.Generator().manual_seed(5))
    return (result.b @ result.a).double()


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> bool:
    return bool((actual - expected).norm() <= tolerance * expected.norm())


def svd_nonzero(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = int((s > 1e-5 * s[0]).sum())  # zero: fp32-made updates leave rounding noise at ~1e-7 of s[0]
    return u[:, :k], s[:k], vh[:k]


def nearest_orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


def reference_tsv(updates: list[torch.Tensor], dimension: int, alpha: float = 1.0) -> torch.Tensor:
    """TSV-Merge: keep each task's top D/T singular triplets, replace the concatenated U and V by their nearest
    orthonormal matrices (U_perp = P Q^T from U = P S Q^T), keep the singular values."""
    keep = dimension // len(updates)
    us, ss, vs = [], [], []
    for update in updates:
        u, s, vh = svd_nonzero(update)
        us.append(u[:, :keep])
        ss.append(s[:keep])
        vs.append(vh[:keep].T)
    u_perp, v_perp = nearest_orthonormal(torch.cat(us, 1)), nearest_orthonormal(torch.cat(vs, 1))
    return alpha * u_perp @ torch.diag(torch.cat(ss)) @ v_perp.T


def reference_iso_c(updates: list[torch.Tensor], alpha: float = 1.0) -> torch.Tensor:
    """Iso-C: SVD of the task-arithmetic sum, every singular value replaced by their mean."""
    u, s, vh = svd_nonzero(sum(updates))
    return alpha * s.mean() * u @ vh


def reference_iso_cts(updates: list[torch.Tensor], dimension: int, fraction: float = 0.8) -> torch.Tensor:
    """Iso-CTS: common subspace = top k of the sum's left singular vectors; each task adds the top (D - k)/T
    directions of (I - U_k U_k^T) dW_t; U and V orthonormalised; isotropic spectrum at the mean kept value."""
    tasks = len(updates)
    specific_total = round((dimension - int(dimension * fraction)) / tasks) * tasks
    k = dimension - specific_total
    u, s, vh = svd_nonzero(sum(updates))
    us, ss, vs = [u[:, :k]], [s[:k]], [vh[:k].T]
    for update in updates:
        projected = update - u[:, :k] @ u[:, :k].T @ update
        ut, st, vht = svd_nonzero(projected)
        us.append(ut[:, : specific_total // tasks])
        ss.append(st[: specific_total // tasks])
        vs.append(vht[: specific_total // tasks].T)
    mean = torch.cat(ss).mean()
    return mean * nearest_orthonormal(torch.cat(us, 1)) @ nearest_orthonormal(torch.cat(vs, 1)).T


def test_a_linear_merge_in_core_space_is_cat():
    contributions = inputs([4, 6, 3], [0.7, -0.4, 1.1])
    space = core_space([(c.b, c.a, c.scale) for c in contributions])
    result = from_core(space, sum(c.weight * m for c, m in zip(contributions, space.cores)), rank=None, energy=None)
    expected = sum(w * d for w, d in zip([0.7, -0.4, 1.1], dense_updates(contributions)))
    assert close((result.b @ result.a).double(), expected, 1e-6)
    assert result.relative_error == 0.0
    assert close(merged("core_dare", contributions, density=1.0), expected, 1e-6)  # nothing dropped: the sum


@pytest.mark.parametrize("ranks", [[4, 4, 4], [8, 4]])
def test_spectral_methods_in_core_space_equal_dense_references(ranks):
    weights = [0.7, 1.2, 0.9][: len(ranks)]
    contributions = inputs(ranks, weights, seed=len(ranks))
    updates = [w * d for w, d in zip(weights, dense_updates(contributions))]
    dimension = min(OUT, IN, sum(ranks))
    assert close(merged("tsv", contributions), reference_tsv(updates, dimension), 1e-5)
    assert close(merged("tsv", contributions, alpha=0.5), reference_tsv(updates, dimension, 0.5), 1e-5)
    assert close(merged("iso_c", contributions), reference_iso_c(updates), 1e-5)
    assert close(merged("iso_cts", contributions), reference_iso_cts(updates, dimension), 1e-5)
    assert close(merged("iso_cts", contributions, common_fraction=0.5), reference_iso_cts(updates, dimension, 0.5), 1e-5)
    exact = sum(updates)
    for method in ("tsv", "iso_c", "iso_cts"):  # each changes the sum: the comparison above can fail
        assert not close(merged(method, contributions), exact, 0.05), method


def test_iso_c_output_is_isotropic_and_tsv_keeps_each_tasks_singular_values():
    contributions = inputs([4, 4], [1.0, 1.0], seed=3)
    singular = torch.linalg.svdvals(merged("iso_c", contributions))[:8]
    assert torch.allclose(singular, singular.mean().expand(8), rtol=1e-5)
    tasks = sorted(torch.cat([torch.linalg.svdvals(d)[:4] for d in dense_updates(contributions)]).tolist())
    assert torch.allclose(
        torch.linalg.svdvals(merged("tsv", contributions))[:8].sort().values, torch.tensor(tasks).double(), rtol=1e-5
    )


# TIES and DARE written from their definitions (Yadav et al. 2023; Yu et al. 2024): keep the largest
# round(p n) entries, elect the sign of the sum, average the agreeing entries (the paper's disjoint mean);
# DARE keeps each entry with probability p and divides the survivors by p.
def reference_ties(matrices: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    trimmed = []
    for w, m in zip(weights, matrices):
        order = m.abs().flatten().argsort(descending=True)[: round(density * m.numel())]
        mask = torch.zeros(m.numel(), dtype=torch.bool)
        mask[order] = True
        trimmed.append(w * m * mask.view_as(m))
    elected = torch.sign(sum(trimmed))
    total, count = torch.zeros_like(trimmed[0]), torch.zeros_like(trimmed[0])
    for w, t in zip(weights, trimmed):
        agree = (torch.sign(t) == elected) & (t != 0)
        total += torch.where(agree, t, torch.zeros_like(t))
        count += agree * abs(w)
    return torch.where(count > 0, total / count.clamp(min=1e-30), total)


def bases(contributions: list[Contribution]) -> tuple[torch.Tensor, torch.Tensor]:
    """The aligned basis: left singular vectors of the stacked B and of the stacked A^T."""
    left = torch.linalg.svd(torch.cat([c.b.double() for c in contributions], 1), full_matrices=False)[0]
    right = torch.linalg.svd(torch.cat([c.a.double().T for c in contributions], 1), full_matrices=False)[0]
    return left, right


def test_core_ties_and_core_dare_equal_dense_references_in_the_same_basis():
    weights = [0.7, -0.4, 1.1]
    contributions = inputs([4, 6, 3], weights, seed=11)
    left, right = bases(contributions)
    cores = [left.T @ d @ right for d in dense_updates(contributions)]
    expected = left @ reference_ties(cores, weights, 0.3) @ right.T
    assert close(merged("core_ties", contributions, density=0.3, normalize=True), expected, 1e-5)
    generator = torch.Generator().manual_seed(5)
    dare = sum(w * m * (torch.rand(m.shape, generator=generator) < 0.4) / 0.4 for w, m in zip(weights, cores))
    assert close(merged("core_dare", contributions, density=0.4), left @ dare @ right.T, 1e-5)


def test_knots_ties_equals_ties_on_the_dense_svd_alignment_in_the_same_basis():
    weights = [1.0, 0.8]
    contributions = inputs([5, 5], weights, seed=13)
    updates = dense_updates(contributions)
    _, right = bases(contributions)
    # KnOTS: [dW_1 dW_2] = U S [V_1^T V_2^T]; the tasks' aligned coordinates V_i^T, expressed in the right basis
    u, s, vh = svd_nonzero(torch.cat(updates, dim=1))
    coordinates = [block @ right for block in vh.split(IN, dim=1)]
    expected = (u * s) @ reference_ties(coordinates, weights, 0.5) @ right.T
    assert close(merged("knots_ties", contributions, density=0.5, normalize=True), expected, 1e-5)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_peft_serves_a_core_space_merge_of_real_adapters_as_the_dense_reference(
    tiny_base, task_adapter, align_adapter, tmp_path, method
):
    """End to end: PEFT-made adapters (rsLoRA, rank patterns, different layers), merged and loaded by PEFT."""
    from loramerge import merge_adapters
    from loramerge.testing.verify import peft_delta_weights

    weights = [1.0, 0.6]
    merge_adapters(
        {"sources": [{"path": str(task_adapter)}, {"path": str(align_adapter), "weight": 0.6}], "method": method}, tmp_path / "m"
    )
    actual = peft_delta_weights(tiny_base, tmp_path / "m")
    inputs_ = [peft_delta_weights(tiny_base, adapter) for adapter in (task_adapter, align_adapter)]
    references = {
        "tsv": reference_tsv,
        "iso_c": lambda updates, dimension: reference_iso_c(updates),
        "iso_cts": reference_iso_cts,
    }
    for name, delta in actual.items():
        updates = [w * d[name].double() for w, d in zip(weights, inputs_) if name in d]
        dimension = min(*updates[0].shape, sum(int(torch.linalg.matrix_rank(u, rtol=1e-5)) for u in updates))
        assert close(delta.double(), references[method](updates, dimension), 1e-4), name


def test_inputs_that_span_less_than_their_ranks_merge_at_the_planned_rank(tiny_base, task_adapter, tmp_path):
    """An adapter merged with itself: the stacked factors have rank r, not 2r; the output keeps rank 2r."""
    from loramerge import merge_adapters
    from loramerge.testing.verify import peft_delta_weights

    recipe = {"sources": [{"path": str(task_adapter)}, {"path": str(task_adapter)}], "method": "core_dare", "density": 1.0}
    result = merge_adapters(recipe, tmp_path / "m")
    assert result.report["rank_max"] == 16
    actual, single = peft_delta_weights(tiny_base, tmp_path / "m"), peft_delta_weights(tiny_base, task_adapter)
    for name, delta in single.items():
        assert close(actual[name].double(), 2 * delta.double(), 1e-5), name


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts", "knots_ties", "core_ties", "core_dare"])
def test_untrained_inputs_with_zero_b_merge_to_zero_at_the_planned_rank(method):
    """PEFT initialises B = 0: such an adapter spans nothing, and a merge of only such adapters is zero."""
    zeros = [Contribution(a=torch.randn(4, IN), b=torch.zeros(OUT, 4), scale=1.0, weight=1.0) for _ in range(2)]
    result = METHODS[method].function(zeros, MethodSettings(), torch.Generator().manual_seed(0))
    assert result.a.shape == (8, IN) and result.b.shape == (OUT, 8)
    assert float((result.b @ result.a).abs().max()) == 0.0


def test_the_shared_subspace_keeps_the_most_of_every_task_and_is_exact_at_full_rank():
    """Compress-then-Merge's Tucker-2 fit: HOOI never keeps less than its HOSVD start, a single task gets its
    best rank-r approximation (Eckart-Young), and a rank that spans every input changes nothing."""
    from loramerge.merge.spectral import shared_subspace, top_left

    generator = torch.Generator().manual_seed(11)
    cores = [torch.randn(12, 10, generator=generator, dtype=torch.float64) * scale for scale in (1.0, 3.0, 0.5)]
    left, right = shared_subspace(cores, 4, beta=1.0)
    assert torch.allclose(left.T @ left, torch.eye(4, dtype=torch.float64), atol=1e-10)
    start_left, start_right = top_left(torch.cat(cores, 1), 4), top_left(torch.cat([c.T for c in cores], 1), 4)
    kept = sum(float((left.T @ c @ right).square().sum()) for c in cores)
    assert kept >= sum(float((start_left.T @ c @ start_right).square().sum()) for c in cores) - 1e-9
    single_left, single_right = shared_subspace(cores[:1], 4, beta=1.0)
    projected = single_left @ (single_left.T @ cores[0] @ single_right) @ single_right.T
    u, s, vh = torch.linalg.svd(cores[0])
    assert close(projected, (u[:, :4] * s[:4]) @ vh[:4], 1e-8)
    contributions = inputs([4, 4], [0.7, 1.2], seed=12)
    full = merged("tsv", contributions, rank=8, subspace="shared")
    assert close(full, merged("tsv", contributions, rank=8), 1e-5)  # rank 8 spans both: nothing to compress


@pytest.mark.parametrize("method", ["tsv", "iso_c", "core_ties", "knots_ties"])
def test_a_shared_subspace_merge_is_rank_r_and_reports_each_tasks_retained_share(method):
    contributions = inputs([8, 8, 8, 8], [1.0, 1.0, 1.0, 1.0], seed=13)
    settings = MethodSettings(rank=6, subspace="shared")
    result = METHODS[method].function(contributions, settings, torch.Generator().manual_seed(5))
    assert result.a.shape[0] == 6 and torch.linalg.matrix_rank(result.b.double() @ result.a.double()) <= 6
    assert result.task_retained is not None and len(result.task_retained) == 4
    assert all(0.0 < share <= 1.0 + 1e-9 for share in result.task_retained)
    truncated = METHODS[method].function(contributions, MethodSettings(rank=6), torch.Generator().manual_seed(5))
    assert truncated.task_retained is not None  # merge-then-truncate reports them too, for the comparison
