"""The README's main job in its quick form: the whole pipeline on bundled SmolLM2 with a few steps (~1 min)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from peft import PeftConfig
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.demo.report import PRECISION_WORDS

pytestmark = pytest.mark.xdist_group("smollm2")


@pytest.fixture(scope="module")
def demo(smollm2_converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick demo run, shared by the tests below (each checks one promise of its outputs)."""
    root = tmp_path_factory.mktemp("quick-demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAMERGE_CACHE", str(smollm2_converted))
        result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(root / "demo")])
    assert result.exit_code == 0, result.output
    assert not list(root.glob(".demo.partial-*"))
    return root / "demo"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_every_step_writes_its_outputs(demo: Path) -> None:
    for name in ("report.md", "results.json", "scores.png", "retrieval.png", "eval/results.json", "probe/probe.json"):
        assert (demo / name).is_file(), name
    results = read_json(demo / "results.json")
    assert set(results["seconds"]) >= {"data", "train-align", "train-joint", "train-task", "merge", "eval", "probe", "total"}
    assert results["merge"]["exact"] and results["merge"]["rank_max"] == 16  # cat of two r=8 adapters
    assert results["retrieval"]["layer"] == results["training"]["align"]["align_layer"] == 15  # round(30 / 2)
    assert results["training"]["joint"]["align_layer"] == 15 and results["training"]["task"]["align_layer"] is None
    assert results["precision"] in {"no", "bf16"}  # what `auto` resolved to on this machine, and the report says it
    assert f"Precision: {PRECISION_WORDS[results['precision']]}" in (demo / "report.md").read_text()


def test_each_language_group_is_the_mean_of_the_evaluations_scores(demo: Path) -> None:
    groups = read_json(demo / "results.json")["task"]["groups"]
    evaluation = read_json(demo / "eval" / "results.json")["variants"]
    assert set(groups) == {"task", "joint", "merged"}
    members = {
        "supervised": ["en"],
        "transfer (aligned)": ["ja", "ru", "zh_CN"],
        "transfer (no alignment data)": ["fr", "de"],
        "transfer": ["ja", "ru", "zh_CN", "fr", "de"],
    }
    for name, variant in groups.items():
        assert set(variant) == set(members)
        scores = evaluation[name]["languages"]
        for group, langs in members.items():
            assert variant[group] == pytest.approx(sum(scores[lang]["score"] for lang in langs) / len(langs), abs=0.01)


def test_intervals_bracket_the_scores_and_the_gain_is_paired(demo: Path) -> None:
    intervals = read_json(demo / "results.json")["task"]["intervals"]
    evaluation = read_json(demo / "eval" / "results.json")["variants"]
    assert set(intervals["languages"]) == {"en", "fr", "de", "ru", "zh_CN", "ja"}
    for language, per_variant in intervals["languages"].items():
        for name, interval in per_variant.items():
            assert interval["low"] <= evaluation[name]["languages"][language]["score"] <= interval["high"]
    gains = intervals["gain over task"]
    assert gains["transfer"]["items"] == 2 * 6 * 5  # 2 items per label x 6 labels x 5 transfer languages, paired
    for variant in ("joint", "merged"):
        assert gains["transfer"][variant]["verdict"] in {"improved", "worse", "no detectable change"}
        assert gains["transfer"][variant]["detectable"] >= 0
        for language in intervals["languages"]:  # the plot's second panel: the paired gain per language
            assert intervals["gain over task by language"][language]["items"] == 12


def test_retrieval_is_reported_per_variant_and_direction_group(demo: Path) -> None:
    retrieval = read_json(demo / "results.json")["retrieval"]
    assert set(retrieval["variants"]) == {"base", "align", "joint", "merged"}
    assert set(retrieval["by_direction_group"]) == {"base", "align", "joint", "merged"}
    assert set(retrieval["by_direction_group"]["align"]) == {"aligned languages", "no alignment data"}


def test_test_items_are_parallel_and_training_languages_are_as_planned(demo: Path) -> None:
    test = [json.loads(line) for line in (demo / "data/test-demo.jsonl").read_text().splitlines()]
    ids_by_lang: dict[str, set[str]] = {}
    for record in test:
        ids_by_lang.setdefault(record["lang"], set()).add(record["id"])
    assert len(ids_by_lang) == 6 and len({frozenset(ids) for ids in ids_by_lang.values()}) == 1
    all_test = [json.loads(line) for line in (demo / "data/topics/test.jsonl").read_text().splitlines()]
    by_label: dict[str, list[str]] = {}
    for item in sorted({record["id"] for record in all_test}):
        by_label.setdefault(item.split(":")[0], []).append(item)
    assert ids_by_lang["en"] == {item for items in by_label.values() for item in items[:2]}  # items 0-1 of each label
    train = [json.loads(line) for line in (demo / "data/topics/train.jsonl").read_text().splitlines()]
    assert {record["lang"] for record in train} == {"en"}
    pairs = [json.loads(line) for line in (demo / "data/topics/align-train.jsonl").read_text().splitlines()]
    assert {pair["target_lang"] for pair in pairs} == {"ru", "zh_CN", "ja"}  # fr, de: transfer without alignment data
    probe = [json.loads(line) for line in (demo / "data/probe-pairs.jsonl").read_text().splitlines()]
    test_texts = {record["prompt"].removeprefix("Text: ").removesuffix("\n") for record in all_test}
    assert len({pair["source"] for pair in probe}) == 12 and not {pair["source"] for pair in probe} & test_texts


def test_each_steps_recipe_reruns_from_the_demo_folder(demo: Path) -> None:
    # the merged adapter's config points at the bundled base; the recipes at files relative to the demo folder
    assert PeftConfig.from_pretrained(str(demo / "adapters" / "merged")).base_model_name_or_path == "bundled:smollm2-135m"
    task_recipe = yaml.safe_load((demo / "recipes/task.yaml").read_text())
    assert task_recipe["data"] == "data/topics/train.jsonl" and (demo / task_recipe["data"]).is_file()
    joint_recipe = yaml.safe_load((demo / "recipes/joint.yaml").read_text())
    assert joint_recipe["pairs"] == "data/topics/align-train.jsonl" and joint_recipe["task_per_align"] == [2, 1]
    merge_recipe = yaml.safe_load((demo / "recipes/merge.yaml").read_text())
    assert [source["path"] for source in merge_recipe["sources"]] == ["adapters/task", "adapters/align"]


def test_the_report_states_the_verdict_by_language_group(demo: Path) -> None:
    report = (demo / "report.md").read_text()
    assert "transfer (no alignment data)" in report and "| en | supervised |" in report
    assert "## Did transfer improve?" in report and "over task-only on the transfer languages" in report
    verdicts = report.split("## Did transfer improve?")[1].split("|")[0]
    assert verdicts.index("joint training") < verdicts.index("the merged adapter")  # joint first, then the merge
    assert verdicts.count("This run detects a true change of") == 2


def test_demo_refuses_an_output_that_is_a_file(tmp_path):
    out = tmp_path / "demo"
    out.write_text("keep me")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2
    assert out.read_text() == "keep me"


def test_the_report_says_which_way_retrieval_moved() -> None:
    from loramerge.demo.report import retrieval_reading

    def summary(base: float, align: float) -> dict:
        return {"layer": 9, "variants": {"base": {"at_aligned_layer": base}, "align": {"at_aligned_layer": align}}}

    assert "raises retrieval at layer 9 by 20.0 points" in retrieval_reading(summary(0.3, 0.5))
    assert "lowers retrieval at layer 9 by 26.5 points" in retrieval_reading(summary(0.524, 0.259))
    assert retrieval_reading({"layer": None, "variants": {}}) == ""
