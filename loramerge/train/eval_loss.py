"""Held-out losses during training: task loss and alignment loss on fixed eval sets.

Every process evaluates the whole (small) eval set in the same order on the unwrapped model with
no cross-process gathering, so all processes agree on the numbers without any collective call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loramerge.evaluate.retrieval import retrieval_accuracy
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


@dataclass(frozen=True)
class PairEval:
    """Held-out pairs in micro-batches, and each pair's target language (in batch order)."""

    batches: list[dict[str, torch.Tensor]]
    languages: list[str]


def retrieval_by_language(sources: torch.Tensor, targets: torch.Tensor, languages: Sequence[str]) -> dict[str, float]:
    """Ratio-margin top-1 retrieval between each pair's two sides, per target language, both ways averaged.

    Every held-out pair of a language is a candidate (not just the micro-batch), so the number is the one
    `loramerge probe` reports for these sentences at this layer. A language with fewer than 2 pairs is skipped
    (one candidate is always right).
    """
    scores: dict[str, float] = {}
    for language in sorted(set(languages)):
        rows = [i for i, lang in enumerate(languages) if lang == language]
        if len(rows) < 2:
            continue
        forward = retrieval_accuracy(sources[rows], targets[rows])["margin"]
        backward = retrieval_accuracy(targets[rows], sources[rows])["margin"]
        scores[f"eval_retrieval_{language}"] = (forward + backward) / 2
    if scores:
        scores["eval_retrieval"] = sum(scores.values()) / len(scores)
    return scores


@torch.no_grad()
def eval_align(model: ObjectiveModel, pairs: PairEval, device: torch.device) -> dict[str, float]:
    """Mean InfoNCE over eval batches, top-1 accuracy of each source among its batch's targets (both on centred
    vectors when training centres), and margin retrieval at the aligned layer per target language over all
    held-out pairs (`retrieval_by_language`), on the raw pooled vectors as `loramerge probe` scores them."""
    losses, correct, total = [], 0, 0
    all_sources, all_targets = [], []
    for batch in pairs.batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        pooled = mean_pool(
            model.exit(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"], model.align.skip_first_token
        )
        half = pooled.shape[0] // 2
        all_sources.append(pooled[:half].cpu())
        all_targets.append(pooled[half:].cpu())
        if model.align.center:  # the loss and batch accuracy as training computes them; retrieval stays raw, as the probe's
            pooled = pooled - pooled.mean(dim=0, keepdim=True)
        sources, targets = pooled[:half], pooled[half:]
        if half < 2:
            continue  # one pair has no negative
        losses.append(info_nce(sources, targets, model.align.temperature).item())
        similarity = torch.nn.functional.normalize(sources, dim=-1) @ torch.nn.functional.normalize(targets, dim=-1).T
        correct += int((similarity.argmax(dim=1) == torch.arange(half, device=similarity.device)).sum().item())
        total += half
    metrics = retrieval_by_language(torch.cat(all_sources), torch.cat(all_targets), pairs.languages)
    if losses:
        metrics.update({"eval_align_loss": sum(losses) / len(losses), "eval_align_batch_accuracy": correct / total})
    return metrics


def make_evaluator(
    model: ObjectiveModel,
    device: torch.device,
    task_batches: list[dict[str, torch.Tensor]] | None,
    pairs: PairEval | None,
) -> Callable[[], dict[str, float]] | None:
    if not task_batches and not pairs:
        return None

    def evaluate() -> dict[str, float]:
        model.eval()
        metrics: dict[str, float] = {}
        if task_batches:
            metrics["eval_task_loss"] = eval_task_loss(model, task_batches, device)
        if pairs and model.exit is not None:
            metrics.update(eval_align(model, pairs, device))
        return metrics

    return evaluate
