"""Held-out losses during training: task loss and alignment loss on fixed eval sets.

Every process evaluates the whole (small) eval set in the same order on the unwrapped model with
no cross-process gathering, so all processes agree on the numbers without any collective call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from loramerge.models.pooling import mean_pool
from loramerge.train.losses import info_nce, supervised_tokens, task_loss
from loramerge.train.objectives import ObjectiveModel


def batches(examples: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(examples[i : i + size]) for i in range(0, len(examples), size)]


@torch.no_grad()
def eval_task_loss(model: ObjectiveModel, batches_: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    total, tokens = 0.0, 0
    for batch in batches_:
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        total += task_loss(output, batch["labels"], reduction="sum").item()
        tokens += int(supervised_tokens(batch["labels"]).item())
    return total / max(tokens, 1)


@torch.no_grad()
def eval_align(model: ObjectiveModel, batches_: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, float]:
    """Mean InfoNCE over eval batches, and top-1 retrieval accuracy of each source among its batch's targets."""
    losses, correct, total = [], 0, 0
    for batch in batches_:
        batch = {k: v.to(device) for k, v in batch.items()}
        pooled = mean_pool(
            model.exit(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"], model.align.skip_first_token
        )
        half = pooled.shape[0] // 2
        if half < 2:
            continue  # one pair has no negative
        sources, targets = pooled[:half], pooled[half:]
        losses.append(info_nce(sources, targets, model.align.temperature).item())
        similarity = torch.nn.functional.normalize(sources, dim=-1) @ torch.nn.functional.normalize(targets, dim=-1).T
        correct += int((similarity.argmax(dim=1) == torch.arange(half, device=similarity.device)).sum().item())
        total += half
    if not losses:
        return {}
    return {"eval_align_loss": sum(losses) / len(losses), "eval_align_batch_accuracy": correct / total}


def make_evaluator(
    model: ObjectiveModel,
    device: torch.device,
    task_batches: list[dict[str, torch.Tensor]] | None,
    pair_batches: list[dict[str, torch.Tensor]] | None,
) -> Callable[[], dict[str, float]] | None:
    if not task_batches and not pair_batches:
        return None

    def evaluate() -> dict[str, float]:
        model.eval()
        metrics: dict[str, float] = {}
        if task_batches:
            metrics["eval_task_loss"] = eval_task_loss(model, task_batches, device)
        if pair_batches and model.exit is not None:
            metrics.update(eval_align(model, pair_batches, device))
        return metrics

    return evaluate
