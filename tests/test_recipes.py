"""Recipe loading, overrides and per-layer weights."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from loramerge.errors import LoramergeError
from loramerge.merge.layer_weights import interpolate, layer_index, module_weight, parse_layer_range
from loramerge.merge.recipe import MergeRecipe
from loramerge.recipes import apply_override, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_overrides_parse_yaml_values_and_index_lists():
    data = {"sources": [{"path": "a"}, {"path": "b"}]}
    apply_override(data, "sources.1.weight=0.5")
    apply_override(data, "method=svd")
    apply_override(data, "new.section=true")
    assert data == {"sources": [{"path": "a"}, {"path": "b", "weight": 0.5}], "method": "svd", "new": {"section": True}}
    with pytest.raises(LoramergeError, match="not an index"):
        apply_override(data, "sources.5.weight=1")


def test_unknown_keys_and_bad_values_are_all_reported(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sources:\n  - path: a\n    wieght: 2\nmethod: blend\nrank: -1\n")
    with pytest.raises(LoramergeError) as caught:
        load_recipe(MergeRecipe, path)
    message = caught.value.one_line()
    assert "3 problems" in message and "sources.0.wieght: unknown key" in message and "method" in message and "rank" in message
    assert "\n" not in message


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sources:\n  - path: a\n  weight: [\n")
    with pytest.raises(LoramergeError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(MergeRecipe, path)


def test_flags_override_the_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sources:\n  - path: a\nmethod: svd\nrank: 4\n")
    recipe = load_recipe(MergeRecipe, path, ["rank=8"], {"method": "svd", "seed": None})
    assert recipe.rank == 8 and recipe.seed is None  # a flag left at None sets nothing


@pytest.mark.parametrize("text,expected", [("8", (8, 8)), ("0-7", (0, 7)), ("16-", (16, None)), ("-15", (None, 15))])
def test_layer_ranges(text, expected):
    assert parse_layer_range(text) == expected


@pytest.mark.parametrize("text", ["-", "5 7", "x", "7-3"])
def test_bad_layer_ranges(text):
    with pytest.raises(ValueError):
        parse_layer_range(text)


def test_weight_resolution_order():
    rules = [SimpleNamespace(layers="0-1", modules=None, weight=2.0), SimpleNamespace(layers=None, modules=r"mlp\.", weight=3.0)]
    source = SimpleNamespace(weight=1.0, depth_weights=[0.0, 1.0], rules=rules)
    assert module_weight(source, "model.layers.0.self_attn.q_proj", 5) == 2.0
    assert module_weight(source, "model.layers.1.mlp.up_proj", 5) == 3.0  # last matching rule wins
    assert module_weight(source, "model.layers.2.self_attn.q_proj", 5) == 0.5  # depth interpolation
    assert module_weight(source, "model.embed_tokens", 5) == 1.0  # no layer: the source weight
    assert layer_index("transformer.h.11.attn.c_attn") == 11


def test_interpolation_over_depth():
    assert interpolate([1.0, 0.0, 1.0], 0.25) == pytest.approx(0.5)
    assert interpolate([4.0], 0.7) == 4.0
    assert interpolate([0.0, 2.0], 1.0) == 2.0


def test_every_shipped_merge_recipe_validates():
    recipes = sorted(RECIPES.glob("**/merge*.yaml"))
    assert recipes, "recipes/ ships at least one merge recipe"
    for path in recipes:
        load_recipe(MergeRecipe, path)


def test_every_committed_bench_grid_is_a_valid_search_grid_for_three_sources():
    """bench/grids/*.yaml are `merge --search FILE` grids (BENCHMARKS.md runs them): each candidate must make a
    valid recipe of three sources, or the benchmark fails an hour in."""
    from loramerge.merge.search_grid import candidate_recipe, grid_file

    recipe = MergeRecipe.model_validate({"sources": [{"path": name} for name in ("country", "language", "currency")]})
    grids = sorted((RECIPES.parent / "bench" / "grids").glob("*.yaml"))
    assert len(grids) == 3
    for grid in grids:
        for candidate in grid_file(grid):
            assert candidate_recipe(recipe, candidate).method == candidate.changes["method"]
