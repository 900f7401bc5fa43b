"""Held-out retrieval during training: per target language, over all of that language's pairs."""

from __future__ import annotations

import pytest
import torch

from loramerge.evaluate.retrieval import retrieval_accuracy
from loramerge.train.eval_loss import retrieval_by_language


def test_retrieval_is_scored_per_language_over_all_its_pairs() -> None:
    torch.manual_seed(0)
    sources = torch.randn(10, 32)
    targets = sources + 0.01 * torch.randn(10, 32)  # every pair close to its translation
    targets[6:] = torch.randn(4, 32)  # ... except the "de" pairs: unrelated vectors
    languages = ["fr"] * 6 + ["de"] * 4
    scores = retrieval_by_language(sources, targets, languages)
    assert scores["eval_retrieval_fr"] == 1.0
    de = retrieval_accuracy(sources[6:], targets[6:])["margin"], retrieval_accuracy(targets[6:], sources[6:])["margin"]
    assert scores["eval_retrieval_de"] == pytest.approx(sum(de) / 2)
    assert scores["eval_retrieval"] == pytest.approx((1.0 + scores["eval_retrieval_de"]) / 2)


def test_a_language_with_one_pair_is_not_scored() -> None:
    """Among one candidate retrieval is always right: such a score would read 1.0 and mean nothing."""
    scores = retrieval_by_language(torch.randn(3, 4), torch.randn(3, 4), ["fr", "fr", "ko"])
    assert "eval_retrieval_ko" not in scores and "eval_retrieval_fr" in scores
