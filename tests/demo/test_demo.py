"""The README's main job in its quick form: the whole pipeline on bundled SmolLM2 with a few steps (~1 min)."""

from __future__ import annotations

import json

import pytest
import yaml
from peft import PeftConfig
from typer.testing import CliRunner

from loramerge.cli.app import app

pytestmark = pytest.mark.xdist_group("smollm2")


def test_quick_demo_runs_every_step_and_writes_the_report(smollm2_cache, tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output

    for name in ("report.md", "results.json", "scores.png", "retrieval.png", "eval/results.json", "probe/probe.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    groups = results["task"]["groups"]
    assert set(groups) == {"base", "task", "merged"}
    evaluation = json.loads((out / "eval" / "results.json").read_text())["variants"]
    members = {
        "supervised": ["en", "fr"],
        "transfer (aligned)": ["ru", "zh_CN", "ja"],
        "transfer (no alignment data)": ["ko"],
        "transfer": ["ru", "zh_CN", "ja", "ko"],
    }
    for name, variant in groups.items():  # each group is the mean of the evaluation's per-language scores
        assert set(variant) == set(members)
        scores = evaluation[name]["languages"]
        for group, langs in members.items():
            assert variant[group] == pytest.approx(sum(scores[lang]["score"] for lang in langs) / len(langs), abs=0.01)
    assert results["merge"]["exact"] and results["merge"]["rank_max"] == 16  # cat of two r=8 adapters
    assert set(results["retrieval"]["variants"]) == {"base", "align", "merged"}
    by_group = results["retrieval"]["by_direction_group"]
    assert set(by_group) == {"base", "align", "merged"}
    assert set(by_group["align"]) == {"aligned languages", "no alignment data"}
    intervals = results["task"]["intervals"]
    assert set(intervals["languages"]) == {"en", "fr", "ru", "zh_CN", "ja", "ko"}
    for language, per_variant in intervals["languages"].items():  # each interval brackets eval's own score
        for name, interval in per_variant.items():
            assert interval["low"] <= evaluation[name]["languages"][language]["score"] <= interval["high"]
    gains = intervals["gain over task"]
    assert gains["transfer"]["items"] == 4 * 4  # 4 test entities x 4 transfer languages, paired
    assert gains["transfer"]["merged"]["verdict"] in {"improved", "worse", "no detectable change"}
    assert results["retrieval"]["layer"] == results["training"]["align"]["align_layer"] == 15  # round(30 / 2)
    assert set(results["seconds"]) >= {"data", "train-align", "train-task", "merge", "eval", "probe", "total"}

    # The merged adapter's config points at adapters/ relative to the demo folder, and the bundled base.
    assert PeftConfig.from_pretrained(str(out / "adapters" / "merged")).base_model_name_or_path == "bundled:smollm2-135m"
    # Test items are parallel: the same entities in every language; training data only in en and fr.
    test = [json.loads(line) for line in (out / "data/task/test-demo.jsonl").read_text().splitlines()]
    ids_by_lang: dict[str, set[str]] = {}
    for record in test:
        ids_by_lang.setdefault(record["lang"], set()).add(record["id"])
    assert len(ids_by_lang) == 6 and len({frozenset(ids) for ids in ids_by_lang.values()}) == 1
    train = [json.loads(line) for line in (out / "data/task/train.jsonl").read_text().splitlines()]
    assert {record["lang"] for record in train} == {"en", "fr"}
    pairs_langs = {json.loads(line)["target_lang"] for line in (out / "data/pairs-train.jsonl").read_text().splitlines()}
    assert pairs_langs == {"ru", "zh_CN", "ja"}  # Korean: a transfer language without alignment data

    # Each step's recipe reruns from the demo folder.
    task_recipe = yaml.safe_load((out / "recipes/task.yaml").read_text())
    assert task_recipe["data"] == "data/task/train.jsonl" and (out / task_recipe["data"]).is_file()
    merge_recipe = yaml.safe_load((out / "recipes/merge.yaml").read_text())
    assert [source["path"] for source in merge_recipe["sources"]] == ["adapters/task", "adapters/align"]
    report = (out / "report.md").read_text()
    assert "transfer (no alignment data)" in report and "| en | supervised |" in report
    assert "## Did transfer improve?" in report and "over task-only on the transfer languages" in report
    assert not list(tmp_path.glob(".demo.partial-*"))


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
