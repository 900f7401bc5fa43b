"""The module the trainer optimises: one forward per micro-batch, the objective named by the caller.

Both objectives live inside one nn.Module.forward so that a DDP wrapper (from accelerate) sees an
ordinary forward and synchronises gradients for either kind of step.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from loramerge.models.layer_exit import LayerExit
from loramerge.models.lm_head import LMHead, find_lm_head
from loramerge.models.pooling import mean_pool
from loramerge.train.fused_head_loss import chunked_head_loss
from loramerge.train.length_groups import length_groups, row_lengths, trimmed
from loramerge.train.losses import (
    IGNORE_INDEX,
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
    process's anchors are contrasted with all the negatives of the step, not just its own. settings.center
    subtracts the mean of all pooled vectors of the step (both sides, all processes) before the cosines.
    """
    if settings.center:
        # centre on the global batch's mean, so that N processes train exactly as one process with N x the batch
        everyone = gather_with_grad(pooled) if settings.gather_across_processes else pooled
        pooled = pooled - everyone.mean(dim=0, keepdim=True)
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


Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # input_ids, attention_mask, labels of some rows


class ObjectiveModel(nn.Module):
    """fused_head=True (the default) computes the task loss with `chunked_head_loss` wherever `find_lm_head`
    verifies that the model's logits are its decoder's last state through a plain linear head; otherwise,
    or with fused_head=False, the head runs on the positions that predict a supervised token.
    split_by_length=True runs a micro-batch as sub-batches of similar length (`length_groups`): the same
    loss, without computing on padding."""

    def __init__(
        self,
        model: nn.Module,
        align_layer: int | None,
        align: AlignSettings,
        fused_head: bool = True,
        split_by_length: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.align = align
        self.split_by_length = split_by_length
        self.exit = LayerExit(model, align_layer) if align_layer is not None else None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head_on_supervised_only = "logits_to_keep" in inspect.signature(base.forward).parameters
        # a plain attribute, not a submodule: the decoder and head are already registered under self.model
        self._lm_head: list[LMHead] = [head] if fused_head and (head := find_lm_head(base)) is not None else []

    @property
    def fused_head(self) -> bool:
        return bool(self._lm_head)

    def forward(
        self, objective: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if objective == TASK:
            parts = self._parts(input_ids, attention_mask, labels)[0]
            if self._lm_head:
                total = self._fused_task_loss_sum(self._lm_head[0], parts)
            else:
                total = sum(self._task_loss_sum(ids, mask, part_labels) for ids, mask, part_labels in parts)
            return global_token_mean(total, supervised_tokens(labels))
        if objective == ALIGN and self.exit is not None:
            # Blocks from k up and the LM head never run: an alignment step costs about k/L of a task step.
            parts, order = self._parts(input_ids, attention_mask, None)
            pooled = torch.cat([mean_pool(self.exit(ids, mask), mask, self.align.skip_first_token) for ids, mask, _ in parts])
            if order is not None:  # back to the batch's row order: pair i is rows i and B + i
                pooled = pooled[torch.argsort(torch.tensor(order, device=pooled.device))]
            return alignment_loss(pooled, self.align)
        raise ValueError(f"unknown objective {objective!r} for this model")

    def _parts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[list[Part], list[int] | None]:
        """The sub-batches to run and the batch rows they hold, in order (None: the batch as it is)."""
        lengths = row_lengths(attention_mask) if self.split_by_length else None
        groups = length_groups(lengths) if lengths else []
        if len(groups) < 2:
            return [(input_ids, attention_mask, labels)], None
        parts = []
        for rows in groups:
            longest = max(lengths[row] for row in rows)
            part_labels = trimmed(labels, rows, longest) if labels is not None else None
            parts.append((trimmed(input_ids, rows, longest), trimmed(attention_mask, rows, longest), part_labels))
        return parts, [row for rows in groups for row in rows]

    def _task_loss_sum(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.head_on_supervised_only:  # a model whose forward cannot skip positions: full logits
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return task_loss(output, labels, reduction="sum")
        # The LM head runs only where a supervised token is predicted (transformers' logits_to_keep takes indices).
        positions = predicting_positions(labels)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=positions)
        return token_loss(output.logits, labels[:, positions.to(labels.device) + 1], reduction="sum")

    def _fused_task_loss_sum(self, head: LMHead, parts: list[Part]) -> torch.Tensor:
        # Only the supervised (row, position) pairs reach the head: for the demo's batches that is 112 of 16 x 19
        # positions, where logits_to_keep (one position set for all rows) still keeps 16 x 14. The head runs once
        # for all sub-batches: each call streams the whole head weight (671 MB for Gemma-3-270M) through the cache.
        states, targets = [], []
        for input_ids, attention_mask, labels in parts:
            hidden = head.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            shifted = labels[:, 1:].to(hidden.device)
            supervised = shifted != IGNORE_INDEX
            states.append(hidden[:, :-1][supervised])
            targets.append(shifted[supervised])
        return chunked_head_loss(torch.cat(states), head.weight, torch.cat(targets), head.linear.bias, head.softcap)
