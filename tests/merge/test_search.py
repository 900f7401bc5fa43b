"""merge --search: candidate grids, exact candidate merges scored on a dev set, the best one written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.data.records import read_task_file
from loramerge.errors import LoramergeError
from loramerge.evaluate.evaluator import Evaluator
from loramerge.merge.recipe import MergeRecipe
from loramerge.merge.search_grid import candidate_recipe, grid_file, parse_grid
from tests.evaluate.test_eval import save_adapter

RECIPE = MergeRecipe.model_validate(
    {"sources": [{"path": "out/task"}, {"path": "out/align", "rules": [{"layers": "9-", "weight": 0}]}]}
)


def test_inline_axes_form_a_cartesian_product() -> None:
    grid = parse_grid(RECIPE, ["align=0,0.5,1", "task=1,2"])
    assert [c.label for c in grid][:2] == ["align=0, task=1", "align=0, task=2"] and len(grid) == 6
    recipe = candidate_recipe(RECIPE, grid[3])  # align=0.5, task=2
    assert [s.weight for s in recipe.sources] == [2.0, 0.5]


def test_layer_axis_adds_a_rule_after_the_existing_ones() -> None:
    grid = parse_grid(RECIPE, ["2@0-4=0.5"])  # the second source, by position
    rules = candidate_recipe(RECIPE, grid[0]).sources[1].rules
    assert [(r.layers, r.weight) for r in rules] == [("9-", 0.0), ("0-4", 0.5)]


def test_grid_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"sources.1.weight": 0.25}, {"method": "svd", "rank": 8}]}))
    grid = parse_grid(RECIPE, [str(path)])
    assert candidate_recipe(RECIPE, grid[0]).sources[1].weight == 0.25
    assert candidate_recipe(RECIPE, grid[1]).method == "svd"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nope=1"], "is not a source"),
        (["align"], "expected NAME=v1"),
        (["align=x"], "is not a number"),
        (["3=1"], "is not a source"),
    ],
)
def test_bad_specs_say_what_to_write(specs: list[str], message: str) -> None:
    with pytest.raises(LoramergeError, match=message):
        parse_grid(RECIPE, specs)


@pytest.fixture(scope="module")
def search_inputs(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    model = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("search")
    dev = root / "dev.jsonl"
    rows = [
        {"prompt": "The file", "completion": " could not be opened.", "lang": "en"},
        {"prompt": "Save the document. Le", "completion": " fichier", "lang": "fr"},
        {"prompt": "The network", "completion": " connection was lost.", "lang": "en"},
        {"prompt": "Voulez-vous", "completion": " supprimer le fichier", "lang": "fr"},
    ]
    dev.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {
        "model": model,
        "dev": dev,
        "zero": save_adapter(model, root / "zero", 0.0),
        "large": save_adapter(model, root / "large", 0.5),
    }


def test_search_scores_exact_candidates_and_writes_the_best(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    inputs = search_inputs
    args = ["merge", str(inputs["zero"]), str(inputs["large"]), "--search", "large=0,1", "--dev", str(inputs["dev"])]
    args += [
        "--model",
        str(inputs["model"]),
        "--supervised",
        "en",
        "--metric",
        "chrf",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    search = json.loads((out / "search.json").read_text())
    rows = {row["label"]: row for row in search["candidates"]}
    assert list(rows) == ["large=0", "large=1"]
    # Candidate 'large=0' is the zero adapter alone (= the base model); 'large=1' is the large adapter (B of
    # 'zero' is 0): the exact merges must score exactly what those models score when evaluated directly.
    evaluator = Evaluator(str(inputs["model"]), "chrf", max_new_tokens=6)
    evaluator.add_adapter("large", inputs["large"])
    records = read_task_file(inputs["dev"])
    direct = {"large=0": evaluator.evaluate(None, records), "large=1": evaluator.evaluate("large", records)}
    for label, scores in direct.items():
        assert rows[label]["languages"] == {lang: round(s.score, 2) for lang, s in scores.languages.items()}
    assert rows["large=0"]["languages"] != rows["large=1"]["languages"]

    chosen = max(rows.values(), key=lambda row: row["means"]["all"])["label"]
    assert search["chosen"] == chosen and search["objective"] == "all"
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["sources"][1]["weight"] == float(chosen.split("=")[1])
    card = (out / "README.md").read_text()
    assert "## Merge-weight search" in card and f"{chosen} **(chosen)**" in card


def test_search_needs_a_dev_set_and_a_known_objective(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    sources = [str(search_inputs["zero"]), str(search_inputs["large"])]
    no_dev = runner.invoke(app, ["merge", *sources, "--search", "large=0,1", "--out", str(tmp_path / "a")])
    assert no_dev.exit_code == 2 and "--search and --dev go together" in no_dev.output
    args = ["merge", *sources, "--search", "large=0,1", "--dev", str(search_inputs["dev"]), "--search-objective", "transfer"]
    no_groups = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert no_groups.exit_code == 2 and "needs --supervised" in no_groups.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_search_refuses_language_groups_the_dev_set_does_not_have(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Issue 22: --supervised de against a dev set in en and fr was accepted; a supervised objective whose group
    is empty told the user to pass --supervised, which they had."""
    runner = CliRunner()
    args = ["merge", str(search_inputs["zero"]), str(search_inputs["large"]), "--search", "large=0,1"]
    args += ["--dev", str(search_inputs["dev"]), "--model", str(search_inputs["model"])]
    absent = runner.invoke(app, [*args, "--supervised", "de", "--out", str(tmp_path / "a")])
    assert absent.exit_code == 2 and "--supervised de: no record" in absent.stderr
    everything = runner.invoke(
        app, [*args, "--supervised", "en,fr", "--search-objective", "transfer", "--out", str(tmp_path / "b")]
    )
    assert everything.exit_code == 2 and "no transfer language" in " ".join(everything.stderr.split())
    assert "pass --supervised" not in everything.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_grid_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("candidates:\n  - sources.0.weight: 1\ncandidate:\n  - sources.0.weight: 2\n")
    with pytest.raises(LoramergeError, match="unknown top-level key.*candidate"):
        grid_file(grid)


def test_candidates_that_give_the_same_merge_are_named(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    """A layer rule for layers the adapters do not have (the tiny model has 4) changes nothing: said, not silent."""
    args = ["merge", str(search_inputs["zero"]), str(search_inputs["large"]), "--search", "large@40-=0,1"]
    args += ["--dev", str(search_inputs["dev"]), "--model", str(search_inputs["model"]), "--max-new-tokens", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())
    assert "warning:" in stderr and "'large@40-=0' and 'large@40-=1' give the same merge" in stderr


def test_search_methods_chooses_the_method_and_its_scale_on_dev(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Issue 23: one command that picks the method and its scale on a dev set, from a small default grid."""
    out = tmp_path / "auto"
    args = ["merge", str(search_inputs["zero"]), str(search_inputs["large"]), "--search", "methods"]
    args += ["--dev", str(search_inputs["dev"]), "--model", str(search_inputs["model"]), "--metric", "chrf"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    search = json.loads((out / "search.json").read_text())
    labels = [row["label"] for row in search["candidates"]]
    assert labels == [
        "cat x0.5",
        "cat x1",
        "ties density=0.3",
        "ties density=0.5",
        "ties density=0.7",
        "ties density=1",
        "tsv alpha=0.5",
        "tsv alpha=1",
        "iso_c alpha=0.5",
        "iso_c alpha=1",
        "iso_cts alpha=0.5",
        "iso_cts alpha=1",
    ]
    best = max(search["candidates"], key=lambda row: (row["means"]["all"], -labels.index(row["label"])))
    assert search["chosen"] == best["label"]
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["method"] == best["changes"]["method"]
    assert f"{best['label']} **(chosen)**" in (out / "README.md").read_text()


def test_search_methods_uses_svd_for_the_sum_under_a_rank_limit_and_stands_alone() -> None:
    from loramerge.merge.method_grid import method_candidates

    recipe = MergeRecipe(sources=[{"path": "a"}, {"path": "b", "weight": 2.0}, {"path": "c"}], method="svd", rank=16)
    candidates = dict(method_candidates(recipe))
    assert candidates["svd x0.333"]["sources.1.weight"] == pytest.approx(2.0 / 3.0)
    assert {changes["method"] for changes in candidates.values()} == {"svd", "ties", "tsv", "iso_c", "iso_cts"}
    with pytest.raises(LoramergeError, match="give it alone"):
        parse_grid(recipe, ["methods", "a=0,1"])
    with pytest.raises(LoramergeError, match="at least two adapters"):
        method_candidates(MergeRecipe(sources=[{"path": "a"}]))


def test_a_candidate_that_cannot_be_merged_is_named(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    """--search methods scales the weights (cat x0.5): the error names the candidate whose recipe overflowed."""
    out = tmp_path / "m"
    args = ["merge", str(search_inputs["zero"]), str(search_inputs["large"]), "--weights", "1,1e39", "--search", "methods"]
    args += ["--dev", str(search_inputs["dev"]), "--model", str(search_inputs["model"]), "--max-new-tokens", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]  # after the base model's loading bar
    assert line.startswith("error: --search candidate cat x0.5: sources.1.weight") and "= 5e+38" in line, line
    assert "internal error" not in result.stderr and not out.exists()


def test_a_bad_grid_candidate_is_refused_before_the_base_model_loads(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("candidates:\n  - {method: cat}\n  - {method: iso_c, density: 0.5}\n")
    args = ["merge", str(search_inputs["zero"]), str(search_inputs["large"]), "--search", str(grid)]
    args += ["--dev", str(search_inputs["dev"]), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "method 'iso_c' does not use 'density'" in result.stderr, result.output
