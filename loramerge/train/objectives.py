"""The module the trainer optimises: one forward per micro-batch, the objective named by the caller.

Both objectives live inside one nn.Module.forward so that a DDP wrapper (from accelerate) sees an
ordinary forward and synchronises gradients for either kind of step.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from loramerge.models.layer_exit import LayerExit
from loramerge.models.pooling import mean_pool
from loramerge.train.losses import (
    gather_with_grad,
    info_nce,
    predicting_positions,
    supervised_tokens,
    task_loss,
    token_loss,
)
from loramerge.train.recipe import AlignSettings

TASK = "task"
ALIGN = "align"


def process_rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


def alignment_loss(pooled: torch.Tensor, settings: AlignSettings) -> torch.Tensor:
    """InfoNCE between the two halves of a pair batch: rows [0, B) are sources, [B, 2B) their targets.

    With several processes the candidates are the gathered global batch (with gradient), so every
    process's anchors are contrasted with all the negatives of the step, not just its own.
    """
    half = pooled.shape[0] // 2
    sources, targets = pooled[:half], pooled[half:]
    if not settings.gather_across_processes:
        return info_nce(sources, targets, settings.temperature, 0, settings.symmetric)
    offset = process_rank() * half
    forward = info_nce(sources, gather_with_grad(targets), settings.temperature, offset)
    if not settings.symmetric:
        return forward
    backward = info_nce(targets, gather_with_grad(sources), settings.temperature, offset)
    return (forward + backward) / 2


def global_token_mean(total: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Sum of token losses -> this process's share of the mean over ALL processes' tokens.

    DDP averages gradients over processes, so returning sum * world / global_tokens makes the step the
    token mean of the global batch; a plain per-process mean would overweight short sequences on
    processes that drew fewer tokens, and one process would not match N processes.
    """
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return total / tokens.clamp(min=1)
    global_tokens = tokens.detach().clone()
    distributed.all_reduce(global_tokens)
    return total * distributed.get_world_size() / global_tokens.clamp(min=1)


class ObjectiveModel(nn.Module):
    def __init__(self, model: nn.Module, align_layer: int | None, align: AlignSettings) -> None:
        super().__init__()
        self.model = model
        self.align = align
        self.exit = LayerExit(model, align_layer) if align_layer is not None else None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head_on_supervised_only = "logits_to_keep" in inspect.signature(base.forward).parameters

    def forward(
        self, objective: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if objective == TASK:
            return global_token_mean(self._task_loss_sum(input_ids, attention_mask, labels), supervised_tokens(labels))
        if objective == ALIGN and self.exit is not None:
            # Blocks from k up and the LM head never run: an alignment step costs about k/L of a task step.
            hidden = self.exit(input_ids, attention_mask)
            return alignment_loss(mean_pool(hidden, attention_mask, self.align.skip_first_token), self.align)
        raise ValueError(f"unknown objective {objective!r} for this model")

    def _task_loss_sum(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.head_on_supervised_only:  # a model whose forward cannot skip positions: full logits
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return task_loss(output, labels, reduction="sum")
        # The LM head runs only where a supervised token is predicted (transformers' logits_to_keep takes indices).
        positions = predicting_positions(labels)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=positions)
        return token_loss(output.logits, labels[:, positions.to(labels.device) + 1], reduction="sum")
