"""The fused, vocabulary-blocked head loss equals the plain computation in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loramerge.models.lm_head import soft_capped
from loramerge.train.fused_head_loss import chunked_head_loss, plain_head_loss, rows_per_block


def float64_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """The definition, in float64: sum over rows of logsumexp(logits) - logits[target]."""
    logits = F.linear(hidden.double(), weight.double(), None if bias is None else bias.double())
    logits = soft_capped(logits, softcap)
    return (torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)).sum()


def loss_and_grad(function, hidden: torch.Tensor, scale: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = hidden.detach().clone().requires_grad_(True)
    loss = function(leaf)
    (loss * scale).backward()  # a grad_output other than 1: the stored gradient must be scaled by it
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("block_rows", [7, 64, 1000])  # blocks that do not divide V, and one block for all
def test_loss_and_gradient_equal_the_float64_definition(softcap: float | None, with_bias: bool, block_rows: int) -> None:
    generator = torch.Generator().manual_seed(0)
    rows, hidden_size, vocab = 37, 16, 150
    hidden = torch.randn(rows, hidden_size, generator=generator)
    weight = torch.randn(vocab, hidden_size, generator=generator) * 2  # large logits: soft-capping matters
    bias = torch.randn(vocab, generator=generator) if with_bias else None
    targets = torch.randint(0, vocab, (rows,), generator=generator)

    fused_loss, fused_grad = loss_and_grad(lambda h: chunked_head_loss(h, weight, targets, bias, softcap, block_rows), hidden)
    reference_loss, reference_grad = loss_and_grad(lambda h: float64_loss(h, weight, targets, bias, softcap), hidden)

    torch.testing.assert_close(fused_loss.double(), reference_loss, rtol=1e-6, atol=1e-5)
    # gradients reach ~10 here: 1e-5 is a few float32 ulps of the largest
    torch.testing.assert_close(fused_grad.double(), reference_grad.double(), rtol=1e-5, atol=1e-5)


def test_equal_to_transformers_float32_cross_entropy_on_a_large_vocabulary() -> None:
    """The plain computation (F.cross_entropy over float32 logits, as transformers and the Trainer compute it)
    at a 32k vocabulary with logits of a trained model's magnitude: per-token sums over 32k exps in float32."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(48, 64, generator=generator) * 3
    weight = torch.randn(32768, 64, generator=generator)
    targets = torch.randint(0, 32768, (48,), generator=generator)

    fused_loss, fused_grad = loss_and_grad(lambda h: chunked_head_loss(h, weight, targets), hidden)
    plain_loss, plain_grad = loss_and_grad(lambda h: plain_head_loss(h, weight, targets), hidden)

    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_without_gradient_it_only_computes_the_loss() -> None:
    generator = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(9, 8, generator=generator), torch.randn(40, 8, generator=generator)
    targets = torch.randint(0, 40, (9,), generator=generator)
    with torch.no_grad():
        loss = chunked_head_loss(hidden.requires_grad_(True), weight, targets, block_rows=16)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss.double(), float64_loss(hidden.detach(), weight, targets, None, None), rtol=1e-6, atol=1e-6)


def test_a_trainable_head_is_refused() -> None:
    with pytest.raises(ValueError, match="frozen"):
        chunked_head_loss(torch.randn(2, 4), torch.randn(10, 4, requires_grad=True), torch.tensor([1, 2]))


def test_block_rows_follow_the_byte_budget() -> None:
    assert rows_per_block(640) == 8 * 2**20 // (4 * 640)  # Gemma-3-270M: 3,276 vocabulary rows, 8 MiB of weight
    assert rows_per_block(4096, element_bytes=2) == 1024  # an 8B model in bf16
    assert rows_per_block(10**6) == 256  # never fewer rows than a useful matrix product
