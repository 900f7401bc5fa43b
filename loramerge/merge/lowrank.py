"""Low-rank linear algebra: spectra and their optimal (Eckart-Young) truncation, norms of B @ A from Gram
matrices, and a randomised SVD for the dense updates of the sparsifying methods. The exact SVD of a weighted sum
of LoRA factors goes through the R x R core of core_space.py and never forms the out x in matrix: on 2 CPU
cores, fp32, 4096 x 4096 with R = 32, a dense SVD took 38-76 s and the QR-core route svd used before 4 ms; the
Gram route takes 0.30x of that route per module (bench/probes.py svd-module, 14336 x 4096, four r=16 inputs:
8.2 against 27.5 ms).
Everything runs in float32 even for bf16 inputs: bf16's 8-bit mantissa would lose the small singular values that
decide the truncation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Relative slack when comparing cumulative energy with a target fraction: fp32 sums of squares
# carry ~1e-7 relative error, so energy=1.0 must not demand one more singular value than exists.
ENERGY_SLACK = 1e-6
# Randomised range finder: extra columns and power iterations (Halko et al. 2011, sec. 4.3-4.5);
# 8 extra columns and 4 iterations give near-optimal bases for the flat spectra of pruned updates.
OVERSAMPLE = 8
POWER_ITERATIONS = 4
# A float32 Gram sum is trusted where it keeps at least 1e-2 of its terms' magnitude: its ~1e-7 relative error is
# then below 1e-5 of the squared norm (5e-6 of the norm); below that the norm is recomputed in float64.
RESOLVED = 1e-2


@dataclass(frozen=True)
class Spectrum:
    """A thin SVD: matrix = left @ diag(values) @ right, values descending."""

    left: torch.Tensor
    values: torch.Tensor
    right: torch.Tensor


@dataclass(frozen=True)
class Truncation:
    """Rank-k factors B (out x k), A (k x in) and how much of the matrix they keep."""

    b: torch.Tensor
    a: torch.Tensor
    retained_energy: float | None  # None where it has no meaning (PEFT-compatible 'linear')
    relative_error: float
    task_retained: tuple[float, ...] | None = None  # core methods: each input's share of its own update kept
    norm: float | None = None  # ||b @ a||_F where the method knows it (kept singular values); None: from the factors


def product_frobenius_norm(b: torch.Tensor, a: torch.Tensor) -> float:
    """||b @ a||_F from the Gram matrices: trace((b^T b)(a a^T)), an R x R computation."""
    b, a = b.double(), a.double()
    squared = torch.sum((b.T @ b) * (a @ a.T)).item()
    return max(squared, 0.0) ** 0.5


@dataclass(frozen=True)
class FactorNorms:
    """Frobenius norms of a LoRA module's factors: ||B A||_F <= b * a bounds its update."""

    b: float
    a: float


def frobenius(tensor: torch.Tensor) -> float | None:
    """||tensor||_F, or None where an entry is NaN or Inf. One float32 reduction, as cheap as a sum (0.33 ms for a
    Llama-3-8B layer's factors of two r=16 adapters, one thread); float64 where float32 squares overflow (entries
    beyond ~1e19), so only a non-finite entry gives None."""
    norm = float(torch.linalg.vector_norm(tensor.float()))
    if math.isfinite(norm) or not bool(torch.isfinite(tensor).all()):
        return norm if math.isfinite(norm) else None
    return float(torch.linalg.vector_norm(tensor.double()))


@dataclass(frozen=True)
class GramSums:
    """sum_ij k_i k_j tr((B_i^T B_j)(A_j A_i^T)) = ||sum_i k_i B_i A_i||_F^2, each input's tr((B_i^T B_i)(A_i A_i^T))
    = ||B_i A_i||_F^2 (without k_i: an input weighted 0 still has a norm), and the sizes of the entries summed (what
    a float32 sum's rounding is relative to)."""

    total: float
    magnitude: float
    diagonal: list[tuple[float, float]]  # (tr(...), its entries' size) per input, k not applied

    def resolved(self, whole: bool) -> bool:
        """Float32 holds them: no overflow, and each sum keeps >= RESOLVED of its entries' size."""
        sums = [*self.diagonal, (self.total, self.magnitude)] if whole else self.diagonal
        return math.isfinite(self.magnitude) and all(value >= RESOLVED * size for value, size in sums)


def gram_sums(terms: list[tuple[torch.Tensor, torch.Tensor, float]], dtype: torch.dtype, whole: bool) -> GramSums:
    cast = [(b.to(dtype), a.to(dtype), k) for b, a, k in terms]
    total = magnitude = 0.0
    diagonal = []
    for i, (b_i, a_i, k_i) in enumerate(cast):
        for j in range(i, len(cast) if whole else i + 1):
            b_j, a_j, k_j = cast[j]
            products = ((b_i.T @ b_j) * (a_i @ a_j.T)).double()
            value, size = float(products.sum()), float(products.abs().sum())
            twice = 1 if i == j else 2
            total, magnitude = total + twice * k_i * k_j * value, magnitude + twice * abs(k_i * k_j) * size
            if i == j:
                diagonal.append((value, size))
    return GramSums(total, magnitude, diagonal)


def sum_norms(terms: list[tuple[torch.Tensor, torch.Tensor, float]], whole: bool = True) -> tuple[float, list[float]]:
    """||sum_i k_i B_i A_i||_F (NaN unless `whole`) and each ||B_i A_i||_F, from the r_i x r_j Gram blocks
    (B_i^T B_j) and (A_i A_j^T): no out x in matrix, no stacked copy of the factors.

    float32 first: on 14336 x 16 a Gram takes 0.11 ms, float64's 0.50 ms (one thread). A float32 sum is off by
    ~1e-7 of its entries' size, so where they cancel to below RESOLVED of it (--weights 1,-1 of one adapter: float32
    reads ~3e-4 of the input there, float64 ~1e-8) or overflow, float64 computes them again."""
    sums = gram_sums(terms, torch.float32, whole)
    if not sums.resolved(whole):
        sums = gram_sums(terms, torch.float64, whole)
    whole_norm = max(sums.total, 0.0) ** 0.5 if whole else math.nan
    return whole_norm, [max(value, 0.0) ** 0.5 for value, _ in sums.diagonal]


def choose_rank(values: torch.Tensor, rank: int | None, energy: float | None, total: float | None = None) -> int:
    """How many singular values to keep: a fixed rank, or the fewest that keep `energy` of ||M||_F^2.

    `total` is ||M||_F^2 when `values` are only the leading part of M's spectrum (a randomised sketch).
    """
    available = values.numel()
    if energy is None:
        return max(1, min(rank if rank is not None else available, available))
    cumulative = torch.cumsum(values.double() ** 2, dim=0)
    total = cumulative[-1].item() if total is None else total
    if total == 0.0:
        return 1
    keep = int(torch.searchsorted(cumulative, energy * total * (1.0 - ENERGY_SLACK)).item()) + 1
    return max(1, min(keep, available))


def truncate(spectrum: Spectrum, keep: int) -> Truncation:
    """Split sqrt(S) between the factors (balanced norms) and report the Eckart-Young error.

    The error is summed from the discarded tail, not as total - kept: when 99.9% is kept the
    subtraction cancels catastrophically in fp32.
    """
    values = spectrum.values.double()
    total = float((values**2).sum().item())
    tail = float((values[keep:] ** 2).sum().item())
    retained, error = (1.0, 0.0) if total <= 0.0 else (1.0 - tail / total, (tail / total) ** 0.5)
    root = values[:keep].sqrt().to(spectrum.left.dtype)
    b = spectrum.left[:, :keep] * root
    a = root[:, None] * spectrum.right[:keep]
    norm = float((values[:keep] ** 2).sum().item()) ** 0.5  # ||b @ a||_F: the kept singular values
    return Truncation(b=b, a=a, retained_energy=retained, relative_error=error, norm=norm)


def randomized_svd(matrix: torch.Tensor, columns: int, generator: torch.Generator) -> Spectrum:
    """Approximate top singular triplets of a dense matrix (Halko, Martinsson, Tropp 2011).

    Falls back to the exact thin SVD when the requested size approaches the matrix's smaller side,
    where the randomised method saves nothing.
    """
    matrix = matrix.float()
    smaller = min(matrix.shape)
    width = columns + OVERSAMPLE
    if width >= smaller // 2:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return Spectrum(left=u, values=s, right=vh)
    probe = torch.randn(matrix.shape[1], width, generator=generator, dtype=matrix.dtype)
    basis, _ = torch.linalg.qr(matrix @ probe)
    for _ in range(POWER_ITERATIONS):
        basis, _ = torch.linalg.qr(matrix.T @ basis)
        basis, _ = torch.linalg.qr(matrix @ basis)
    u, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return Spectrum(left=basis @ u, values=s, right=vh)


def dense_truncation(matrix: torch.Tensor, rank: int | None, energy: float | None, generator: torch.Generator) -> Truncation:
    """Near-best rank-k factors of a dense matrix; grows the randomised sketch until `energy` is reached.

    The sketch sees only the leading spectrum, so energy and error are measured against the matrix itself.
    """
    matrix = matrix.float()
    total = float((matrix.double() ** 2).sum().item())
    smaller = min(matrix.shape)
    columns = min(rank, smaller) if rank is not None else min(32, smaller)
    while True:
        spectrum = randomized_svd(matrix, columns, generator)
        if energy is None:
            keep = min(columns, spectrum.values.numel())
            break
        kept = float((spectrum.values.double() ** 2).sum().item())
        if total == 0.0 or kept >= energy * total * (1.0 - ENERGY_SLACK) or spectrum.values.numel() >= smaller:
            keep = choose_rank(spectrum.values, None, energy, total)
            break
        columns = min(columns * 2, smaller)
    factors = truncate(spectrum, keep)
    if total == 0.0:
        return factors
    residual = float((matrix - factors.b @ factors.a).double().norm().item()) / total**0.5
    kept_energy = float((spectrum.values[:keep].double() ** 2).sum().item())
    retained = min(kept_energy / total, 1.0)
    return Truncation(b=factors.b, a=factors.a, retained_energy=retained, relative_error=residual, norm=factors.norm)
