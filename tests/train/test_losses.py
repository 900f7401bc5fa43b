"""Losses against hand arithmetic, against transformers' own loss, and across two real processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from loramerge.models.pooling import mean_pool
from loramerge.train.losses import gather_with_grad, info_nce, supervised_tokens, task_loss

R2 = math.sqrt(2)
# Unit directions chosen so every cosine is 1, 1/sqrt(2), 0 or -1 (lengths differ: cosine ignores them).
ANCHORS = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
CANDIDATES = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
# cosines: anchor 0 -> [1, 1/sqrt2, 0], anchor 1 -> [0, 1/sqrt2, -1]; temperature 0.5 doubles them.


def nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    return -math.log(math.exp(logits[target]) / sum(math.exp(value) for value in logits))


def test_info_nce_by_hand() -> None:
    expected = (nll([2, R2, 0], 0) + nll([0, R2, -2], 1)) / 2
    assert info_nce(ANCHORS, CANDIDATES, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_with_offset_by_hand() -> None:
    expected = (nll([2, R2, 0], 1) + nll([0, R2, -2], 2)) / 2
    assert info_nce(ANCHORS, CANDIDATES, temperature=0.5, positive_offset=1).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_info_nce_by_hand() -> None:
    forward = (nll([2, R2], 0) + nll([0, R2], 1)) / 2
    # reverse: candidate j queries the anchors (column j of the similarity matrix), positive anchor j
    reverse = (nll([2, 0], 0) + nll([R2, R2], 1)) / 2
    loss = info_nce(ANCHORS, CANDIDATES[:2], temperature=0.5, symmetric=True)
    assert loss.item() == pytest.approx((forward + reverse) / 2, rel=1e-6)
    assert reverse == pytest.approx((nll([2, 0], 0) + math.log(2)) / 2)


def test_symmetric_info_nce_with_offset_by_hand() -> None:
    forward = (nll([2, R2, 0], 1) + nll([0, R2, -2], 2)) / 2
    reverse = (nll([R2, R2], 0) + nll([0, -2], 1)) / 2  # positives 1 and 2 against the local anchors only
    loss = info_nce(ANCHORS, CANDIDATES, temperature=0.5, positive_offset=1, symmetric=True)
    assert loss.item() == pytest.approx((forward + reverse) / 2, rel=1e-6)


def test_per_process_losses_average_to_the_full_batch_loss() -> None:
    """What data parallelism computes: rank r's anchors against all candidates, positives at r * N."""
    generator = torch.Generator().manual_seed(0)
    anchors, candidates = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    per_rank = [info_nce(anchors[2 * r : 2 * r + 2], candidates, positive_offset=2 * r) for r in range(3)]
    torch.testing.assert_close(torch.stack(per_rank).mean(), info_nce(anchors, candidates))


def test_info_nce_sends_gradient_to_both_sides_in_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    anchors = torch.randn(3, 8, generator=generator).to(torch.bfloat16).requires_grad_()
    candidates = torch.randn(3, 8, generator=generator).to(torch.bfloat16).requires_grad_()
    loss = info_nce(anchors, candidates, symmetric=True)
    assert loss.dtype == torch.float32
    loss.backward()
    assert anchors.grad.abs().sum() > 0 and candidates.grad.abs().sum() > 0


def test_info_nce_refuses_missing_positives() -> None:
    with pytest.raises(ValueError, match="need at least 4 candidates, got 3"):
        info_nce(ANCHORS, CANDIDATES, positive_offset=2)


def test_mean_pool_by_hand_with_padding_and_skip_first() -> None:
    hidden = torch.arange(24, dtype=torch.float32).reshape(3, 4, 2)  # token t of row b is [8b + 2t, 8b + 2t + 1]
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]])  # right padded, one token, left padded
    plain = torch.tensor([[(0 + 2 + 4) / 3, (1 + 3 + 5) / 3], [8.0, 9.0], [(18 + 20 + 22) / 3, (19 + 21 + 23) / 3]])
    # skip_first: row 0 keeps tokens 1-2; row 1 has one token and keeps it; row 2 drops its first REAL token
    skipped = torch.tensor([[(2 + 4) / 2, (3 + 5) / 2], [8.0, 9.0], [(20 + 22) / 2, (21 + 23) / 2]])
    torch.testing.assert_close(mean_pool(hidden, mask, skip_first=False), plain)
    torch.testing.assert_close(mean_pool(hidden, mask, skip_first=True), skipped)


def test_mean_pool_is_float32_finite_and_differentiable() -> None:
    hidden = torch.randn(2, 3, 4).to(torch.bfloat16).requires_grad_()
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0], [0, 0, 0]]), skip_first=True)
    assert pooled.dtype == torch.float32
    assert torch.equal(pooled[1], torch.zeros(4))  # an all-padding row pools to zero, not NaN
    pooled.sum().backward()
    assert hidden.grad[0, 1].abs().sum() > 0 and hidden.grad[0, 0].abs().sum() == 0


def test_task_loss_equals_transformers_loss() -> None:
    # Imported here: the two-process test's workers import this module, and transformers would
    # double their start-up time.
    from tests.tiny_configs import build_tiny, random_batch

    model = build_tiny("llama")
    input_ids, attention_mask = random_batch(batch=3, length=9)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :3] = -100  # a prompt that is not supervised
    output = model(input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(task_loss(output, labels), output.loss)
    torch.testing.assert_close(task_loss(output.logits, labels), output.loss)
    # rows have 9, 8, 7 real tokens; positions 3.. of each are supervised
    assert supervised_tokens(labels).item() == 6 + 5 + 4
    torch.testing.assert_close(task_loss(output, labels, reduction="sum"), output.loss * 15)


def test_task_loss_without_supervised_tokens_is_zero_not_nan() -> None:
    logits = torch.randn(2, 4, 10, requires_grad=True)
    loss = task_loss(logits, torch.full((2, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_gather_is_the_identity_without_distributed() -> None:
    tensor = torch.randn(2, 3)
    assert gather_with_grad(tensor) is tensor


def _gathered_info_nce_worker(
    rank: int, world: int, store: str, out: str, anchors: torch.Tensor, candidates: torch.Tensor
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        rows = anchors.shape[0] // world
        local_anchors = anchors[rank * rows : (rank + 1) * rows].clone().requires_grad_()
        local_candidates = candidates[rank * rows : (rank + 1) * rows].clone().requires_grad_()
        loss = info_nce(local_anchors, gather_with_grad(local_candidates), positive_offset=rank * rows)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "anchors": local_anchors.grad, "candidates": local_candidates.grad}, f"{out}/{rank}.pt"
        )
        dist.barrier()  # tearing gloo down while the peer is still talking to it aborts the process
    finally:
        dist.destroy_process_group()


def test_gathered_candidates_give_the_full_batch_gradient(tmp_path: Path) -> None:
    """Two real processes (gloo): each process's anchors meet every candidate as a negative, and the
    gradients, averaged over processes as DDP does, equal those of the single-process full batch."""
    world = 2
    generator = torch.Generator().manual_seed(2)
    anchors, candidates = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    mp.spawn(_gathered_info_nce_worker, args=(world, str(tmp_path / "store"), str(tmp_path), anchors, candidates), nprocs=world)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(world)]

    full_anchors, full_candidates = anchors.clone().requires_grad_(), candidates.clone().requires_grad_()
    full = info_nce(full_anchors, full_candidates)
    full.backward()
    torch.testing.assert_close(torch.stack([result["loss"] for result in results]).mean(), full.detach())
    torch.testing.assert_close(torch.cat([result["anchors"] for result in results]) / world, full_anchors.grad)
    torch.testing.assert_close(torch.cat([result["candidates"] for result in results]) / world, full_candidates.grad)


def test_centred_alignment_loss_ignores_a_direction_every_vector_shares() -> None:
    """Anisotropy: on the bundled models every pooled vector carries one large shared component (raw cosines
    ~0.99). Centring on the micro-batch mean removes it, so the loss sees only what tells sentences apart."""
    from loramerge.train.objectives import alignment_loss
    from loramerge.train.recipe import AlignSettings

    torch.manual_seed(0)
    pooled = torch.randn(8, 16)  # 4 sources, then their 4 targets
    shared = 50 * torch.randn(1, 16)
    centred = AlignSettings(center=True)
    assert torch.allclose(alignment_loss(pooled, centred), alignment_loss(pooled + shared, centred), atol=1e-5)
    by_hand = info_nce(*(pooled - pooled.mean(dim=0)).split(4), temperature=0.1)
    assert torch.allclose(alignment_loss(pooled, centred), by_hand)
    raw = AlignSettings(center=False)
    assert not torch.allclose(alignment_loss(pooled, raw), alignment_loss(pooled + shared, raw), atol=1e-2)
