"""Cross-entropy of a frozen LM head that never holds the [tokens x vocabulary] logits or their gradient.

On a real vocabulary the head dominates a small model's task step: Gemma-3-270M's 262,144 x 640 head is
168M of its 268M parameters, and the logits of one 16 x 64 batch are 1.07 GB in float32, with a gradient
of the same size. Here the head runs one block of vocabulary rows at a time over all supervised
positions, and the loss and its gradient with respect to the hidden states are built in the same pass
with an online softmax (as flash attention does for attention):

    m, s, acc   running max, sum of exp(logit - m), and sum of exp(logit - m) * cap'(logit) * W_v
    loss_i   =  m_i + log s_i - logit_i[target_i]
    dloss/dh =  acc_i / s_i - cap'(target logit) * W[target_i]

So each block of W is read once, while it is in cache, for two matrix products (logits, then
exp(logits) @ W_block); the plain computation writes and re-reads the whole logits tensor several
times. The backward pass only scales the stored [tokens x hidden] gradient. Liger-Kernel's fused linear
cross-entropy and Apple's Cut Cross-Entropy do the same on GPU.

Precision: the per-block sums are float32 and the blocks combine by rescaling, which lands within ~1e-6
of a float64 computation; torch's CPU log_softmax over 262,144 logits (what F.cross_entropy, so
transformers and the Trainer, use) is itself off by up to ~1e-4 per token. Tests compare both.

On CUDA with the `gpu` extra installed, Liger-Kernel's Triton kernel does the same job instead (a tuned
kernel beats a loop of PyTorch blocks there); this loop stays the path everywhere else.

Pure tensor math: no model, no module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from loramerge.models.int8_groups import Int8Groups
from loramerge.models.lm_head import soft_capped

HeadWeight = torch.Tensor | Int8Groups  # a frozen head held as exact int8 groups reads back float32 blocks

# Vocabulary rows per block, as bytes of head weight: small enough that a block stays in the CPU's cache
# between its two products. Measured on 2 CPU cores (AMD EPYC), Gemma-3-270M's head (D = 640), 600 rows,
# the logits product alone: blocks of 4,096 rows (10 MiB) 1.39 s, 16,384 1.69 s, 65,536 2.07 s, the whole
# vocabulary at once 3.87 s.
BLOCK_BYTES = 8 * 2**20


def rows_per_block(hidden_size: int, element_bytes: int = 4, budget_bytes: int = BLOCK_BYTES) -> int:
    return max(256, budget_bytes // (element_bytes * hidden_size))


def _block(weight: HeadWeight, start: int, stop: int) -> torch.Tensor:
    return weight[start:stop] if isinstance(weight, torch.Tensor) else weight.rows(start, stop)


def _rows_at(weight: HeadWeight, indices: torch.Tensor) -> torch.Tensor:
    return weight[indices] if isinstance(weight, torch.Tensor) else weight.gather(indices)


def plain_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, materialising all logits: the reference."""
    logits = soft_capped(F.linear(hidden, weight, bias).float(), softcap)
    return F.cross_entropy(logits, targets, reduction="sum")


def _cap_slope(raw: torch.Tensor, softcap: float) -> torch.Tensor:
    """d/dx of softcap * tanh(x / softcap): 1 - tanh^2(x / softcap)."""
    return 1.0 - torch.tanh(raw / softcap).square()


def fused_head_loss_and_grad(
    hidden: torch.Tensor,
    weight: HeadWeight,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    block_rows: int,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss, d loss / d hidden or None), one pass over the vocabulary in blocks of block_rows."""
    rows = hidden.shape[0]
    running_max = torch.full((rows,), -torch.inf, dtype=torch.float32, device=hidden.device)
    running_sum = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    target_logit = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    target_raw = torch.zeros(rows, dtype=torch.float32, device=hidden.device)  # before the cap, for its slope
    weighted = torch.zeros(rows, hidden.shape[1], dtype=torch.float32, device=hidden.device) if with_grad else None
    for start in range(0, weight.shape[0], block_rows):
        stop = min(start + block_rows, weight.shape[0])
        block_weight = _block(weight, start, stop)
        raw = F.linear(hidden, block_weight, None if bias is None else bias[start:stop]).float()
        logits = soft_capped(raw, softcap)
        in_block = ((targets >= start) & (targets < stop)).nonzero().flatten()
        target_logit[in_block] = logits[in_block, targets[in_block] - start]
        target_raw[in_block] = raw[in_block, targets[in_block] - start]
        new_max = torch.maximum(running_max, logits.amax(dim=1))
        rescale = torch.exp(running_max - new_max)  # exp(-inf) = 0 on the first block
        exps = torch.exp(logits.sub_(new_max[:, None]))
        running_sum.mul_(rescale).add_(exps.sum(dim=1))
        running_max = new_max
        if weighted is not None:
            if softcap is not None:
                exps.mul_(_cap_slope(raw, softcap))
            weighted.mul_(rescale[:, None]).add_((exps.to(weight.dtype) @ block_weight).float())
    loss = (running_max + running_sum.log() - target_logit).sum()
    if weighted is None:
        return loss, None
    target_rows = _rows_at(weight, targets).float()
    if softcap is not None:
        target_rows = target_rows * _cap_slope(target_raw, softcap)[:, None]
    grad_hidden = weighted / running_sum[:, None] - target_rows
    return loss, grad_hidden.to(hidden.dtype)


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: HeadWeight,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        softcap: float | None,
        block_rows: int,
    ) -> torch.Tensor:
        loss, grad_hidden = fused_head_loss_and_grad(hidden, weight, targets, bias, softcap, block_rows, with_grad=True)
        ctx.save_for_backward(grad_hidden)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), None, None, None, None, None


def chunked_head_loss(
    hidden: torch.Tensor,
    weight: HeadWeight,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    block_rows: int | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of soft_capped(hidden [N, D] @ weight[V, D].T + bias) against targets [N].

    Equal to `plain_head_loss` in value and gradient with respect to `hidden`, with at most N x block_rows
    logits alive at once. The head is frozen (LoRA leaves it so): a weight or bias that requires grad is
    refused. Every target must be a real token id: select the supervised rows before calling. Under
    torch.no_grad (evaluation) no gradient is computed.
    """
    if (isinstance(weight, torch.Tensor) and weight.requires_grad) or (bias is not None and bias.requires_grad):
        raise ValueError("chunked_head_loss: the head must be frozen (its weight and bias get no gradient here)")
    if hidden.is_cuda and isinstance(weight, torch.Tensor) and (liger := liger_head_loss()) is not None:
        return liger(hidden, weight, targets, bias, softcap)
    block = block_rows or rows_per_block(weight.shape[1], weight.element_size())
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        return fused_head_loss_and_grad(hidden, weight, targets, bias, softcap, block, with_grad=False)[0]
    return _FusedHeadLoss.apply(hidden, weight, bias, targets, softcap, block)


HeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", "float | None"], torch.Tensor]


def liger_head_loss() -> HeadLoss | None:
    """Liger-Kernel's fused linear cross-entropy (summed), or None when the `gpu` extra is not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None

    def loss(
        hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
    ) -> torch.Tensor:
        return LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=softcap)(weight, hidden, targets, bias)

    return loss
