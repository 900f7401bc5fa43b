"""Merges defined on singular vectors: TSV-Merge, Iso-C, Iso-CTS and KnOTS' alignment, on any matrices.

Pure functions of the (weighted) updates; loramerge applies them to the small core-space cores, where they
give the same merged update as on the dense out x in matrices (they only use singular vectors and values,
which an orthonormal change of basis carries over unchanged).

Low-rank adaptation: the papers decompose full-rank fine-tuning updates over min(out, in) singular
directions; a LoRA merge has at most R (the sum of input ranks) non-zero ones. Every size below counts in
`dimension` = min(out, in, R), and directions whose singular value is (numerically) zero are dropped: they
carry no update and, being arbitrary, would make the result depend on the SVD routine. The functions keep
their inputs' dtype (loramerge passes float64 cores).
"""

from __future__ import annotations

import torch

# Singular values below this fraction of the largest are zero: fp32 SVD leaves exact zeros at ~1e-7 of
# sigma_max on 64 x 64 cores and 4096 x 4096 matrices alike, real LoRA spectra stay above ~1e-3.
RANK_TOLERANCE = 1e-5


def numerical_rank(values: torch.Tensor) -> int:
    if values.numel() == 0 or float(values[0]) <= 0.0:
        return 0
    return int((values > RANK_TOLERANCE * values[0]).sum())


def leading(matrix: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top min(count, numerical rank) singular triplets: u (p x k), s (k), vh (k x q)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = min(count, numerical_rank(s))
    return u[:, :keep], s[:keep], vh[:keep]


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal matrix nearest to `matrix` (Procrustes): P Q^T for matrix = P S Q^T, on the space the
    columns span. A rank-deficient matrix (an adapter merged with itself: [u1 u2 u1 u2]) keeps only the pairs of
    P and Q with a non-zero singular value: the full polar factor would complete P with directions no input has
    (TSV then returned s1, s1, s2, s2 for an adapter with s1..s4, 99-129 % away from it)."""
    p, s, qh = torch.linalg.svd(matrix, full_matrices=False)
    keep = numerical_rank(s)
    return p[:, :keep] @ qh[:keep]


def orthogonalised(us: list[torch.Tensor], ss: list[torch.Tensor], vhs: list[torch.Tensor]) -> torch.Tensor:
    """U_perp diag(s) V_perp^T from concatenated singular triplets whose vectors are made orthonormal."""
    left = polar_factor(torch.cat(us, dim=1))
    right = polar_factor(torch.cat(vhs, dim=0).T)
    return (left * torch.cat(ss)) @ right.T


def nonzero(updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """The updates that carry something. An all-zero one (weight 0, or PEFT's untrained B = 0) is a task that
    is absent, not a task whose share of directions is empty: counting it halved the other adapter's share."""
    return [update for update in updates if bool(update.any())]


def task_singular_vectors(updates: list[torch.Tensor], dimension: int, task_fraction: float | None, alpha: float) -> torch.Tensor:
    """TSV-Merge (Gargiulo et al., CVPR 2025): each task keeps its top task_fraction * dimension singular
    triplets (default 1 / number of non-zero tasks); the kept left and right vectors are orthogonalised across
    tasks (decorrelating them), the singular values kept: alpha * U_perp S V_perp^T."""
    present = nonzero(updates)
    if not present:
        return torch.zeros_like(updates[0])
    task_fraction = task_fraction if task_fraction is not None else 1.0 / len(present)
    keep = max(1, int(task_fraction * dimension))
    us, ss, vhs = zip(*(leading(update, keep) for update in present))  # a non-zero update keeps >= 1 triplet
    return alpha * orthogonalised(list(us), list(ss), list(vhs))


def isotropic_common(updates: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum with its spectrum flattened to the mean
    singular value: alpha * mean(s) * U V^T."""
    u, s, vh = leading(torch.stack(updates).sum(dim=0), min(updates[0].shape))
    if s.numel() == 0:
        return torch.zeros_like(updates[0])
    return alpha * s.mean() * (u @ vh)


def common_size(dimension: int, tasks: int, common_fraction: float) -> int:
    """Iso-CTS' common subspace size: about common_fraction * dimension, leaving the rest divisible by tasks
    (the reference code's rule: round((dimension - int(fraction * dimension)) / tasks) * tasks specific)."""
    specific = round((dimension - int(dimension * common_fraction)) / tasks) * tasks
    return dimension - specific


def isotropic_common_and_specific(
    updates: list[torch.Tensor], dimension: int, common_fraction: float, alpha: float
) -> torch.Tensor:
    """Iso-CTS (Marczak et al., ICML 2025): the top singular directions of the sum (common subspace) plus,
    per task, the top directions of its update with the common subspace projected out; all orthogonalised
    and given one isotropic singular value, the mean of the kept ones."""
    present = nonzero(updates)  # an all-zero task gets no share of the task-specific directions
    if not present:
        return torch.zeros_like(updates[0])
    updates = present
    common = common_size(dimension, len(updates), common_fraction)
    per_task = (dimension - common) // len(updates)
    u, s, vh = leading(torch.stack(updates).sum(dim=0), common)
    us, ss, vhs = [u], [s], [vh]
    for update in updates:
        residual = update - u @ (u.T @ update)
        specific = leading(residual, per_task)
        us.append(specific[0])
        ss.append(specific[1])
        vhs.append(specific[2])
    values = torch.cat(ss)
    if values.numel() == 0:
        return torch.zeros_like(updates[0])
    return alpha * orthogonalised(us, [torch.full_like(values, float(values.mean()))], vhs)


def knots_alignment(updates: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """KnOTS (Stoica et al., ICLR 2025): SVD of the column-wise concatenation [dW_1 ... dW_n] = U S [V_1^T ...
    V_n^T]. Returns U S (shared) and each task's aligned coordinates V_i^T (k x in): dW_i = U S V_i^T."""
    u, s, vh = leading(torch.cat(updates, dim=1), sum(min(x.shape) for x in updates))
    # V_i^T = S^-1 U^T dW_i, each from its own update, not vh's blocks: equal updates then get bit-equal coordinates,
    # so `--weights 1,-1` of one adapter ties every TIES vote exactly (vh's blocks differ by ~1e-16, and the votes
    # elected that noise: 0.84 of the input kept instead of nothing). s > RANK_TOLERANCE * s[0]: no division blows up.
    return u * s, [(u.T @ update) / s[:, None] for update in updates]


def balanced_by_norm(cores: list[torch.Tensor], beta: float) -> list[torch.Tensor]:
    """Compress-then-Merge's task balance: each core rescaled to beta * its norm + (1 - beta) * the mean norm
    (beta 1: as given, so the largest update claims the subspace; beta 0: every task at the same norm)."""
    norms = [float(core.norm()) for core in cores]
    mean = sum(norms) / len(norms)
    return [core * ((beta * norm + (1 - beta) * mean) / norm) if norm > 0 else core for core, norm in zip(cores, norms)]


def top_left(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.linalg.svd(matrix, full_matrices=False)[0][:, :rank]


def shared_subspace(
    cores: list[torch.Tensor], rank: int, beta: float, iterations: int = 100, tolerance: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress-then-Merge (He et al., ICML 2026): orthonormal U (p x r) and V (q x r) that keep the most of every
    task at once, max sum_t ||U^T M_t V||_F^2 over the balanced cores (a Tucker-2 decomposition of the stack
    p x q x T): HOSVD start, then HOOI sweeps until the kept energy stops rising. Each task is then merged as its
    r x r coordinates U^T M_t V, so the merge is rank r by construction instead of truncated afterwards."""
    balanced = balanced_by_norm(cores, beta)
    rank = min(rank, *balanced[0].shape)
    left = top_left(torch.cat(balanced, dim=1), rank)  # mode-0 unfolding [M_1 ... M_T]
    right = top_left(torch.cat([core.T for core in balanced], dim=1), rank)
    kept = -1.0
    for _ in range(iterations):
        left = top_left(torch.cat([core @ right for core in balanced], dim=1), rank)
        right = top_left(torch.cat([core.T @ left for core in balanced], dim=1), rank)
        now = sum(float((left.T @ core @ right).square().sum()) for core in balanced)
        if now - kept <= tolerance * max(now, 1e-300):
            break
        kept = now
    return left, right
