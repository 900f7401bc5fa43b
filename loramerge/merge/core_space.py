"""Core space: every input's update B_i A_i lives in span(all B) x span(all A^T), an R x R space.

With orthonormal bases L (out x R_b) of the stacked B factors and Q (in x R_a) of the stacked A^T, each update
is dW_i = L M_i Q^T exactly, with M_i = (L^T B_i)(A_i Q) an R_b x R_a core (R = sum of input ranks; R_b <=
min(out, R)). Merging the cores and mapping back (Panariello et al., "Accurate and Efficient Low-Rank Model
Merging in Core Space", NeurIPS 2025) never forms an out x in matrix: for Llama-3-8B's 14336 x 4096 MLP
modules and four r=16 adapters the cores are 64 x 64, 14,000x fewer entries than dW.

The bases are the left singular vectors of the stacked factors, so they do not depend on the order of the
inputs and neither do the entry-wise methods (TIES, DARE) on the cores; orthonormal changes of basis leave the
spectral methods (TSV, Iso-C, Iso-CTS) unchanged. They are never formed either: L = B C_b with C_b = V
Lambda^(-1/2) from the eigendecomposition of the R x R Gram matrix B^T B = V Lambda V^T, the cores come from
Gram blocks (L^T B_i = C_b^T (B^T B_i)), and the output factors are B @ (small) and (small) @ A. The tall
matrices are touched by two matrix products per side. Measured on one core (14336 x 4096, four r=16 inputs):
QR-based bases 106 ms per module, this 20-30 ms. Gram and cores are float64: squaring the condition number
costs nothing at eps = 1e-16 (fp32 QR + SVD + SVD already lose 1.1e-6 relative, measured against cat).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from loramerge.merge.layout import pad_factors
from loramerge.merge.lowrank import Spectrum, Truncation, choose_rank, truncate

# Gram eigenvalues below this fraction of the largest span no direction of the inputs: fp64 eigh leaves
# ~1e-16 * R of lambda_max in an exactly rank-deficient Gram (an adapter merged with itself); 1e-13 on lambda
# is 3e-7 on the singular values, far below any trained LoRA direction.
GRAM_TOLERANCE = 1e-13


@dataclass(frozen=True)
class CoreSpace:
    """update_i = (b @ b_basis) @ cores[i] @ (a_basis.T @ a): orthonormal bases as coefficients of the stacks."""

    b: torch.Tensor  # out x R: [B_1 ... B_n]
    a: torch.Tensor  # R x in: [A_1; ...; A_n]
    b_basis: torch.Tensor  # R x R_b, float64: b @ b_basis has orthonormal columns
    a_basis: torch.Tensor  # R x R_a, float64: a.T @ a_basis has orthonormal columns
    cores: list[torch.Tensor]  # R_b x R_a each, float64, the scale s_i included, the merge weight not


def gram_basis(gram: torch.Tensor) -> torch.Tensor:
    """C with X C = left singular vectors of X (non-zero ones), from X's Gram matrix X^T X = V Lambda V^T."""
    values, vectors = torch.linalg.eigh(gram)
    keep = values > GRAM_TOLERANCE * values[-1].clamp(min=torch.finfo(values.dtype).tiny)
    values, vectors = values[keep].flip(0), vectors[:, keep].flip(1)  # descending, as an SVD would order them
    return vectors / values.sqrt()


def core_space(factors: list[tuple[torch.Tensor, torch.Tensor, float]]) -> CoreSpace:
    """Bases and cores of (B_i, A_i, scale_i) inputs that share one module's shape."""
    # one input (svd passes the weighted stack): no copy; cat of 14336 x 64 costs ~0.5 ms a module
    b = factors[0][0].float() if len(factors) == 1 else torch.cat([b.float() for b, _, _ in factors], dim=1)
    a = factors[0][1].float() if len(factors) == 1 else torch.cat([a.float() for _, a, _ in factors], dim=0)
    b64, a64 = b.double(), a.double()  # once each: the tall copies are the costliest step after the Gram products
    b_gram, a_gram = b64.T @ b64, a64 @ a64.T
    b_basis, a_basis = gram_basis(b_gram), gram_basis(a_gram)
    bounds = torch.tensor([0] + [b_i.shape[1] for b_i, _, _ in factors]).cumsum(0).tolist()
    cores = [
        (b_basis.T @ b_gram[:, start:end]) * scale @ (a_gram[start:end, :] @ a_basis)
        for (start, end), (_, _, scale) in zip(zip(bounds, bounds[1:]), factors)
    ]
    return CoreSpace(b=b, a=a, b_basis=b_basis, a_basis=a_basis, cores=cores)


def retained_shares(tasks: list[torch.Tensor], left: torch.Tensor, right: torch.Tensor) -> tuple[float, ...]:
    """||P_left M_t P_right||^2 / ||M_t||^2 for each task core: how much of its own update the output's row and
    column spaces can carry (1 for a task inside them; an all-zero task counts as kept)."""
    shares = []
    for task in tasks:
        total = float(task.square().sum())
        shares.append(float((left.T @ task @ right).square().sum()) / total if total > 0 else 1.0)
    return tuple(shares)


def from_core(
    space: CoreSpace, merged: torch.Tensor, rank: int | None, energy: float | None, tasks: list[torch.Tensor] | None = None
) -> Truncation:
    """LoRA factors of L @ merged @ Q^T: the SVD of the small merged core, truncated to rank or energy.

    Error and retained energy are relative to the merged update (as for `svd`), measured on the core: the bases
    are orthonormal, so ||L C Q^T||_F = ||C||_F. With `tasks` (the weighted input cores), each one's retained
    share of its own update in the output's subspace is reported too.
    """
    u, values, vh = torch.linalg.svd(merged, full_matrices=False)
    keep = choose_rank(values, rank, energy)
    small = truncate(Spectrum(left=u, values=values, right=vh), keep)  # U_k S_k^1/2 and S_k^1/2 V_k^T
    shares = retained_shares(tasks, u[:, :keep], vh[:keep].T) if tasks is not None else None
    b = space.b @ (space.b_basis @ small.b).float()
    a = (small.a @ space.a_basis.T).float() @ space.a
    if energy is None:  # the rank planned before the work (as for svd) even where the inputs span less
        (out, total), fan_in = space.b.shape, space.a.shape[1]
        a, b = pad_factors(a, b, min(rank if rank is not None else total, out, fan_in, total))
    return replace(small, b=b, a=a, task_retained=shares)  # the norm is the kept values', the bases orthonormal
