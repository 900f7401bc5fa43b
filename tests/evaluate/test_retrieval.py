"""Retrieval scoring against hand computations and known extremes."""

from __future__ import annotations

import pytest
import torch

from loramerge.evaluate.retrieval import cosine_matrix, ratio_margin_matrix, retrieval_accuracy, top1_accuracy


def test_ratio_margin_by_hand():
    similarity = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2], [0.3, 0.4, 0.6]], dtype=torch.float64)
    scores = ratio_margin_matrix(similarity, k=2)
    # row 0's two best: 0.9, 0.5 -> 0.7; column 0's two best: 0.9, 0.8 -> 0.85
    assert scores[0, 0].item() == pytest.approx(0.9 / ((0.7 + 0.85) / 2))
    # row 1's best: 0.8, 0.7 -> 0.75; column 1's best: 0.7, 0.5 -> 0.6
    assert scores[1, 1].item() == pytest.approx(0.7 / ((0.75 + 0.6) / 2))
    assert top1_accuracy(similarity) == pytest.approx(2 / 3)  # row 1 prefers column 0 by cosine


def test_identical_sentences_are_always_retrieved():
    vectors = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    assert retrieval_accuracy(vectors, vectors.clone()) == {"cosine": 1.0, "margin": 1.0}


def test_unrelated_vectors_are_near_chance():
    generator = torch.Generator().manual_seed(1)
    queries, candidates = torch.randn(400, 32, generator=generator), torch.randn(400, 32, generator=generator)
    scores = retrieval_accuracy(queries, candidates)
    assert scores["cosine"] < 0.02 and scores["margin"] < 0.02  # chance is 1/400


def test_margin_fixes_a_hub():
    """Queries e_i + 1.2 u; candidate 0 is u itself (a hub near every query), candidates 1-3 are e_i.
    By cosine every query retrieves the hub (0.768 > 0.640); the margin divides by the hub's density
    (0.768 vs 0.32 for the others) and restores every pair: 1.25 > 1.04 for query 1."""
    eye = torch.eye(5, dtype=torch.float64)
    hub = eye[4]
    queries = torch.stack([eye[i] + 1.2 * hub for i in range(4)])
    candidates = torch.stack([hub, eye[1], eye[2], eye[3]])
    cosine = cosine_matrix(queries, candidates)
    assert top1_accuracy(cosine) == pytest.approx(0.25)
    assert top1_accuracy(ratio_margin_matrix(cosine, k=2)) == 1.0
