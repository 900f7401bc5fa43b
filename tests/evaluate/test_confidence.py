"""The bootstrap intervals against closed forms: the item bootstrap's standard error is the standard error of the
mean (sd / sqrt(n), population sd), pairing removes the items' shared difficulty, and seed resampling widens."""

from __future__ import annotations

import math

import pytest
import torch

from loramerge.evaluate.confidence import bootstrap_interval, paired_scores


def test_item_bootstrap_matches_the_standard_error_of_the_mean() -> None:
    scores = torch.tensor([100.0] * 30 + [0.0] * 70)  # exact match 30 %
    interval = bootstrap_interval(scores, resamples=20_000)
    expected_se = math.sqrt(0.3 * 0.7 / 100) * 100  # 4.58 points
    assert interval.mean == pytest.approx(30.0)
    assert interval.standard_error == pytest.approx(expected_se, rel=0.03)
    assert interval.low == pytest.approx(30 - 1.96 * expected_se, abs=1.5)
    assert interval.high == pytest.approx(30 + 1.96 * expected_se, abs=1.5)
    assert interval.detectable == pytest.approx(2.8 * interval.standard_error)


def test_pairing_removes_the_items_shared_difficulty() -> None:
    torch.manual_seed(0)
    difficulty = torch.rand(200) * 100
    better = difficulty + 1.0  # the same items, one point better each
    unpaired_se = bootstrap_interval(better).standard_error
    paired = bootstrap_interval(better - difficulty)
    assert paired.mean == pytest.approx(1.0)
    assert paired.low == pytest.approx(1.0) and paired.high == pytest.approx(1.0)  # no noise left once paired
    assert paired.excludes_zero()
    assert unpaired_se > 1.0


def test_an_interval_around_no_effect_includes_zero() -> None:
    differences = torch.tensor([100.0, -100.0] * 50 + [0.0] * 100)
    interval = bootstrap_interval(differences)
    assert interval.mean == 0.0
    assert interval.low < 0 < interval.high
    assert not interval.excludes_zero()


def test_seed_resampling_widens_the_interval_when_seeds_disagree() -> None:
    items = torch.zeros(300)
    items[:150] = 100.0
    agreeing = torch.stack([items, items, items]) - 50.0  # every seed: mean 0
    disagreeing = agreeing + torch.tensor([[-20.0], [0.0], [20.0]])  # seed means -20, 0, +20
    assert bootstrap_interval(disagreeing).standard_error > 2 * bootstrap_interval(agreeing).standard_error


def test_paired_scores_lines_up_items_by_key() -> None:
    variant = [{7: 100.0, 3: 0.0}, {7: 0.0, 3: 100.0}]
    reference = [{7: 0.0, 3: 0.0}, {7: 100.0, 3: 100.0}]
    assert paired_scores(variant, reference, [3, 7]).tolist() == [[0.0, 100.0], [0.0, -100.0]]
