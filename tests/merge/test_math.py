"""Merge invariants, checked against PEFT's own delta weights (an oracle independent of loramerge)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loramerge import merge_adapters
from loramerge.testing.verify import peft_delta_weights
from tests.helpers import relative_error, weighted_sum

TOLERANCE = 1e-5


def merged_deltas(base: Path, sources: list[Path], weights: list[float], out: Path, **options) -> tuple[dict, dict]:
    recipe = {"sources": [{"path": str(s), "weight": w} for s, w in zip(sources, weights)], **options}
    result = merge_adapters(recipe, out)
    return peft_delta_weights(base, out), result.report


def expected_deltas(base: Path, sources: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    return weighted_sum([peft_delta_weights(base, s) for s in sources], weights)


def test_one_adapter_with_weight_one_is_unchanged(tiny_base, align_adapter, tmp_path):
    actual, _ = merged_deltas(tiny_base, [align_adapter], [1.0], tmp_path / "m")
    expected = peft_delta_weights(tiny_base, align_adapter)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert relative_error(actual[name], expected[name]) < TOLERANCE, name


def test_adapter_minus_itself_is_zero(tiny_base, task_adapter, tmp_path):
    actual, _ = merged_deltas(tiny_base, [task_adapter, task_adapter], [1.0, -1.0], tmp_path / "m")
    reference = peft_delta_weights(tiny_base, task_adapter)
    for name, delta in actual.items():
        assert delta.norm() <= 1e-6 * reference[name].norm(), name


def test_cat_is_the_exact_weighted_sum(tiny_base, task_adapter, align_adapter, attention_adapter, tmp_path):
    sources, weights = [task_adapter, align_adapter, attention_adapter], [0.7, -0.3, 1.2]
    actual, report = merged_deltas(tiny_base, sources, weights, tmp_path / "m")
    expected = expected_deltas(tiny_base, sources, weights)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert relative_error(actual[name], expected[name]) < TOLERANCE, name
    # rank = sum of the ranks of the adapters that have the module: no zero padding
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["rank"] == 8 + 4 + 6
    assert report["modules"]["model.layers.1.mlp.down_proj"]["rank"] == 8 + 2
    assert report["modules"]["model.layers.3.mlp.up_proj"]["rank"] == 8
    assert report["modules"]["model.embed_tokens"]["rank"] == 6


def test_svd_at_full_rank_equals_cat(tiny_base, task_adapter, align_adapter, tmp_path):
    sources, weights = [task_adapter, align_adapter], [1.0, 0.5]
    cat, _ = merged_deltas(tiny_base, sources, weights, tmp_path / "cat")
    svd, report = merged_deltas(tiny_base, sources, weights, tmp_path / "svd", method="svd", rank=12)
    for name in cat:
        assert relative_error(svd[name], cat[name]) < TOLERANCE, name
    assert report["max_relative_error"] < TOLERANCE


def test_svd_truncation_error_is_the_eckart_young_optimum(tiny_base, task_adapter, align_adapter, tmp_path):
    sources, weights, rank = [task_adapter, align_adapter], [1.0, 0.5], 5
    actual, report = merged_deltas(tiny_base, sources, weights, tmp_path / "m", method="svd", rank=rank)
    expected = expected_deltas(tiny_base, sources, weights)
    for name, target in expected.items():
        singular = torch.linalg.svdvals(target.double())
        optimum = (singular[rank:] ** 2).sum().sqrt().item() / singular.norm().item()
        achieved = relative_error(actual[name].double(), target.double())
        assert achieved == pytest.approx(optimum, rel=1e-3, abs=1e-6), name
        assert report["modules"][name]["relative_error"] == pytest.approx(optimum, rel=1e-3, abs=1e-6), name
        assert report["modules"][name]["rank"] == rank


def test_energy_keeps_the_fewest_singular_values(tiny_base, task_adapter, align_adapter, tmp_path):
    """Enough energy AND the fewest ranks that give it: keeping every rank would pass the first check alone."""
    sources, weights = [task_adapter, align_adapter], [1.0, 1.0]
    _, report = merged_deltas(tiny_base, sources, weights, tmp_path / "m", method="svd", energy=0.9)
    fewer_would_do = 0
    for name, target in expected_deltas(tiny_base, sources, weights).items():
        energy = torch.cumsum(torch.linalg.svdvals(target.double()) ** 2, dim=0)
        energy = energy / energy[-1]
        fewest = int((energy < 0.9 * (1 - 1e-6)).sum().item()) + 1  # the first k whose top-k energy reaches 0.9
        entry = report["modules"][name]
        assert entry["retained_energy"] >= 0.9 * (1 - 1e-6), name
        assert entry["rank"] == fewest, name
        fewer_would_do += fewest < 8
    assert fewer_would_do  # the case can tell "fewest" from "all": some module needs fewer ranks than an input has


@pytest.mark.parametrize("method,options", [("cat", {}), ("svd", {"rank": 6})])
def test_order_of_inputs_does_not_matter(tiny_base, task_adapter, attention_adapter, tmp_path, method, options):
    forward, _ = merged_deltas(
        tiny_base, [task_adapter, attention_adapter], [0.6, 1.1], tmp_path / "ab", method=method, **options
    )
    backward, _ = merged_deltas(
        tiny_base, [attention_adapter, task_adapter], [1.1, 0.6], tmp_path / "ba", method=method, **options
    )
    for name in forward:
        assert relative_error(backward[name], forward[name]) < 1e-4, name


def test_layer_rules_weight_an_adapter_only_below_a_layer(tiny_base, task_adapter, attention_adapter, tmp_path):
    recipe_sources = [task_adapter, attention_adapter]
    out = tmp_path / "m"
    merge_adapters(
        {"sources": [{"path": str(task_adapter)}, {"path": str(attention_adapter), "rules": [{"layers": "2-", "weight": 0.0}]}]},
        out,
    )
    actual = peft_delta_weights(tiny_base, out)
    below = expected_deltas(tiny_base, recipe_sources, [1.0, 1.0])
    above = peft_delta_weights(tiny_base, task_adapter)
    for name in actual:
        layer_two_or_more = any(f"layers.{i}." in name for i in (2, 3))
        expected = above[name] if layer_two_or_more else below[name]
        assert relative_error(actual[name], expected) < TOLERANCE, name
