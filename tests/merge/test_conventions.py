"""The rules where mergekit, PEFT and the papers differ: each a recipe key, each against its definition."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from loramerge.merge.recipe import MergeRecipe, method_settings
from loramerge.merge.sparsify import SparsifySettings, drop_and_rescale, elect_and_sum, magnitude_mask, weighted_sum

SOURCES = {"sources": [{"path": "a"}, {"path": "b"}]}


def test_a_tied_vote_keeps_nothing_or_elects_plus():
    plus, minus = torch.tensor([[3.0, 1.0]]), torch.tensor([[-1.0, -2.0]])
    # by count: column 0 and 1 are 1 vote each way; by total: column 0 is +2, column 1 is -1
    none = elect_and_sum([plus, minus], [1.0, 1.0], SparsifySettings(majority_sign="frequency"))
    positive = elect_and_sum([plus, minus], [1.0, 1.0], SparsifySettings(majority_sign="frequency", tie_vote="positive"))
    assert none.tolist() == [[0.0, 0.0]]  # a tie has no majority: nothing kept
    assert positive.tolist() == [[3.0, 1.0]]  # mergekit and PEFT: + wins a tie
    exact_tie = elect_and_sum([torch.tensor([[1.0]]), torch.tensor([[-1.0]])], [1.0, 1.0], SparsifySettings(tie_vote="positive"))
    assert exact_tie.tolist() == [[1.0]]  # a zero sum elects + too


def test_normalize_divides_by_absolute_or_signed_weights():
    # weighted updates w_i * M_i with w = (2, -1): entries 2 * 1 = 2 and -1 * -3 = 3 agree (both +)
    weighted, weights = [torch.tensor([[2.0]]), torch.tensor([[3.0]])], [2.0, -1.0]
    absolute = elect_and_sum(weighted, weights, SparsifySettings(normalize=True))
    signed = elect_and_sum(weighted, weights, SparsifySettings(normalize=True, normalize_divisor="signed"))
    assert absolute.item() == pytest.approx(5.0 / 3.0)  # |2| + |-1|
    assert signed.item() == pytest.approx(5.0 / 1.0)  # 2 + (-1)
    cancelling = elect_and_sum(weighted, [1.0, -1.0], SparsifySettings(normalize=True, normalize_divisor="signed"))
    assert cancelling.item() == 5.0  # a zero divisor is replaced by 1


def test_linear_methods_honour_normalize():
    matrices = [torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, -2.0]])]
    assert weighted_sum(matrices, [1.0, 3.0], SparsifySettings()).tolist() == [[5.0, 0.0]]
    assert weighted_sum(matrices, [1.0, 3.0], SparsifySettings(normalize=True)).tolist() == [[1.25, 0.0]]
    assert weighted_sum(matrices, [1.0, -3.0], SparsifySettings(normalize=True, normalize_divisor="signed")).tolist() == [
        [-2.5, 0.0]
    ]


def test_dare_rescales_by_inverse_density_or_to_the_l1_norm():
    matrix = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    kept = matrix * (torch.rand(matrix.shape, generator=torch.Generator().manual_seed(1)) < 0.3)
    inverse = drop_and_rescale(matrix, SparsifySettings(density=0.3), torch.Generator().manual_seed(1))
    l1 = drop_and_rescale(matrix, SparsifySettings(density=0.3, dare_rescale="l1"), torch.Generator().manual_seed(1))
    assert torch.allclose(inverse, kept / 0.3)
    assert torch.allclose(l1, kept * matrix.abs().sum() / kept.abs().sum())
    assert l1.abs().sum().item() == pytest.approx(matrix.abs().sum().item(), rel=1e-5)


def test_kept_count_rounds_or_floors_with_at_least_one():
    values = torch.arange(1.0, 11.0)  # 10 entries
    assert magnitude_mask(values, 0.27).sum() == 3  # round(2.7)
    assert magnitude_mask(values, 0.27, "floor_min1").sum() == 2  # int(2.7)
    assert magnitude_mask(values, 0.04).sum() == 0  # round(0.4)
    assert magnitude_mask(values, 0.04, "floor_min1").sum() == 1  # max(1, int(0.4))


def test_defaults_follow_the_papers_and_presets_fill_unset_rules():
    ties = method_settings(MergeRecipe.model_validate({**SOURCES, "method": "ties"}))
    assert ties.normalize and ties.density == 0.5  # the TIES paper's disjoint mean
    assert (ties.tie_vote, ties.normalize_divisor, ties.kept_count) == ("none", "absolute", "round")
    assert not method_settings(MergeRecipe.model_validate({**SOURCES, "method": "dare_linear"})).normalize
    assert method_settings(MergeRecipe.model_validate({**SOURCES, "method": "dare_linear"})).dare_rescale == "inverse_density"
    mergekit = method_settings(
        MergeRecipe.model_validate({**SOURCES, "method": "dare_ties", "conventions": "mergekit", "tie_vote": "none"})
    )
    assert (mergekit.tie_vote, mergekit.normalize_divisor, mergekit.dare_rescale) == ("none", "signed", "l1")
    assert method_settings(MergeRecipe.model_validate({**SOURCES, "method": "tsv"})).alpha == 1.0


@pytest.mark.parametrize(
    ("method", "key", "value"),
    [
        ("cat", "density", 0.3),
        ("svd", "normalize", True),
        ("ties", "alpha", 1.2),
        ("ties", "seed", 3),
        ("ties", "dare_rescale", "l1"),
        ("dare_linear", "majority_sign", "frequency"),
        ("magnitude_prune", "tie_vote", "positive"),
        ("tsv", "density", 0.5),
        ("iso_c", "conventions", "mergekit"),
        ("iso_c", "task_fraction", 0.5),
        ("core_dare", "kept_count", "round"),
    ],
)
def test_a_key_the_method_does_not_read_is_refused(method, key, value):
    with pytest.raises(ValidationError, match=f"does not use '{key}'"):
        MergeRecipe.model_validate({**SOURCES, "method": method, key: value})


def test_mergekit_conventions_use_mergekits_per_method_defaults():
    """mergekit 0.1.5: normalize defaults to true for ties only (dare_ties, dare_linear, breadcrumbs: false), and
    density to 1."""
    defaults = {
        (conventions, method): method_settings(MergeRecipe(**SOURCES, method=method, conventions=conventions)).normalize
        for conventions in ("loramerge", "mergekit")
        for method in ("ties", "dare_ties", "dare_linear", "magnitude_prune")
    }
    assert defaults == {
        ("loramerge", "ties"): True,
        ("loramerge", "dare_ties"): True,  # the TIES paper's disjoint mean
        ("loramerge", "dare_linear"): False,
        ("loramerge", "magnitude_prune"): False,
        ("mergekit", "ties"): True,
        ("mergekit", "dare_ties"): False,
        ("mergekit", "dare_linear"): False,
        ("mergekit", "magnitude_prune"): False,
    }
    explicit = MergeRecipe(**SOURCES, method="dare_ties", conventions="mergekit", normalize=True, density=0.3)
    assert method_settings(explicit).normalize is True and method_settings(explicit).density == 0.3  # keys win
    for method in ("ties", "dare_ties", "dare_linear", "magnitude_prune"):  # mergekit prunes nothing unless asked
        assert method_settings(MergeRecipe(**SOURCES, method=method, conventions="mergekit")).density == 1.0
        assert method_settings(MergeRecipe(**SOURCES, method=method)).density == 0.5  # the papers' 0.5


@pytest.mark.parametrize("method", ["magnitude_prune", "dare_linear"])
def test_a_module_an_adapter_lacks_counts_as_zero_with_its_weight(tiny_base, task_adapter, attention_adapter, tmp_path, method):
    """docs/merge.md: a module an adapter lacks counts as dW = 0 there. A normalised linear merge divides by every weight
    (mergekit), so the task adapter's MLP modules, which the attention adapter lacks, come out as 1 / (1 + 0.6)."""
    from loramerge import merge_adapters
    from loramerge.testing.verify import peft_delta_weights

    recipe = {
        "sources": [{"path": str(task_adapter), "weight": 1.0}, {"path": str(attention_adapter), "weight": 0.6}],
        "method": method,
        "density": 1.0,  # nothing dropped or trimmed: the definition is the normalised weighted sum
        "normalize": True,
    }
    merge_adapters(recipe, tmp_path / "m")
    merged, task = peft_delta_weights(tiny_base, tmp_path / "m"), peft_delta_weights(tiny_base, task_adapter)
    mlp = [name for name in task if "mlp" in name]
    assert mlp
    for name in mlp:
        expected = task[name] / 1.6
        assert (merged[name] - expected).norm() <= 1e-4 * expected.norm(), name
