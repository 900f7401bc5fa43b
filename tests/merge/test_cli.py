"""The merge command: every refusal exits 2 with one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from loramerge.cli.app import app
from tests.conftest import edit_config
from tests.helpers import adapter_tensors, copy_adapter, leftovers

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["merge", *args])


def assert_refused(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())
    assert leftovers(out.parent) == []


def test_merge_writes_a_complete_adapter(task_adapter, align_adapter, tmp_path):
    out = tmp_path / "merged"
    result = run(str(task_adapter), str(align_adapter), "--weights", "1,-0.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names == {"adapter_model.safetensors", "adapter_config.json", "README.md", "merge_report.json", "recipe.yaml"}
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and str(task_adapter) in card and "-0.5" in card
    report = json.loads((out / "merge_report.json").read_text())
    assert len(report["inputs"][0]["sha256"]["adapter_model.safetensors"]) == 64
    assert "rank" in result.stderr and "max relative error" in result.stderr


def test_high_rank_output_warns_about_vllm(make_adapter, task_adapter, tmp_path):
    wide = make_adapter("wide", seed=8, r=16, lora_alpha=16)
    result = run(str(task_adapter), str(wide), "--out", str(tmp_path / "m"))
    assert result.exit_code == 0
    assert "max_lora_rank" in result.stderr and "--method svd --rank 16" in " ".join(result.stderr.split())


def test_recipe_with_overrides_and_flags(task_adapter, align_adapter, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"sources:\n  - path: {task_adapter}\n  - path: {align_adapter}\n    weight: 0.3\nmethod: cat\n")
    out = tmp_path / "m"
    result = run("--recipe", str(recipe), "--set", "sources.1.weight=0.25", "--method", "svd", "--rank", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    resolved = (out / "recipe.yaml").read_text()
    assert "method: svd" in resolved and "weight: 0.25" in resolved and "rank: 4" in resolved


def test_adapters_given_twice_or_overrides_that_would_be_ignored_are_refused(task_adapter, align_adapter, tmp_path):
    """SRC arguments replace the recipe's sources: a --set on those sources, or a recipe that lists its own, would
    be dropped without a word, so both are refused."""
    out = tmp_path / "m"
    ignored = run(str(task_adapter), str(align_adapter), "--set", "sources.1.weight=0.25", "--out", str(out))
    assert_refused(ignored, out, "--set sources.1.weight=0.25", "--weights")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"sources:\n  - path: {task_adapter}\n  - path: {align_adapter}\n    weight: 0.3\n")
    twice = run(str(task_adapter), "--recipe", str(recipe), "--out", str(out))
    assert_refused(twice, out, str(recipe), "'sources'", "one way")
    method_only = tmp_path / "method.yaml"
    method_only.write_text("method: svd\nrank: 4\n")  # a recipe without sources still combines with arguments
    assert run(str(task_adapter), str(align_adapter), "--recipe", str(method_only), "--out", str(out)).exit_code == 0


def test_existing_output_is_kept_unless_overwrite(task_adapter, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run(str(task_adapter), "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"
    assert run(str(task_adapter), "--out", str(out), "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_different_base_models(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "other")
    edit_config(other, base_model_name_or_path="someone/else")
    out = tmp_path / "m"
    assert_refused(run(str(task_adapter), str(other), "--out", str(out)), out, "different base models", "--allow-base-mismatch")
    assert run(str(task_adapter), str(other), "--out", str(out), "--allow-base-mismatch").exit_code == 0


def test_shape_mismatch(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "other")
    weights = adapter_tensors(other)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    weights[key] = torch.zeros(8, 32)
    save_file(weights, str(other / "adapter_model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "m"
    assert_refused(
        run(str(task_adapter), str(other), "--out", str(out)), out, "model.layers.0.self_attn.q_proj", "different model shapes"
    )


@pytest.mark.parametrize(
    "options,fragment",
    [({"use_dora": True}, "use_dora"), ({"lora_bias": True}, "lora_bias")],
)
def test_dora_and_lora_bias(make_adapter, tmp_path, options, fragment):
    adapter = make_adapter(f"unsupported-{fragment}", r=2, lora_alpha=2, target_modules=["q_proj"], **options)
    out = tmp_path / "m"
    assert_refused(run(str(adapter), "--out", str(out)), out, fragment)


def test_fan_in_fan_out_mismatch(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "other")
    edit_config(other, fan_in_fan_out=True)
    out = tmp_path / "m"
    assert_refused(run(str(task_adapter), str(other), "--out", str(out)), out, "fan_in_fan_out")


def test_conflicting_modules_to_save(make_adapter, tmp_path):
    first = make_adapter("head-1", seed=11, r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    second = make_adapter("head-2", seed=12, r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    out = tmp_path / "m"
    assert_refused(run(str(first), str(second), "--out", str(out)), out, "lm_head.weight differs", "modules_to_save")


def test_non_lora_peft_type(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "ia3")
    edit_config(other, peft_type="IA3")
    out = tmp_path / "m"
    assert_refused(run(str(other), "--out", str(out)), out, "peft_type is 'IA3'")


def test_missing_folder_and_missing_weights(task_adapter, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_config.json").write_text((task_adapter / "adapter_config.json").read_text())
    out = tmp_path / "m"
    result = run(str(tmp_path / "nowhere"), str(empty), "--out", str(out))
    # every problem is reported at once, still on one line
    assert_refused(result, out, "2 problems", "nowhere: adapter folder not found", "no adapter_model.safetensors")


def test_corrupt_safetensors(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "corrupt")
    data = (other / "adapter_model.safetensors").read_bytes()
    (other / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    out = tmp_path / "m"
    assert_refused(run(str(other), "--out", str(out)), out, "unreadable safetensors")


def test_invalid_config_json(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "bad-json")
    (other / "adapter_config.json").write_text("{not json")
    out = tmp_path / "m"
    assert_refused(run(str(other), "--out", str(out)), out, "not valid JSON")


def test_nan_tensors(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "nan")
    weights = adapter_tensors(other)
    key = "base_model.model.model.layers.2.mlp.up_proj.lora_B.weight"
    weights[key][0, 0] = float("nan")
    save_file(weights, str(other / "adapter_model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "m"
    assert_refused(run(str(other), "--out", str(out)), out, key, "NaN or Inf")


def test_pickled_bin_weights(task_adapter, tmp_path):
    other = copy_adapter(task_adapter, tmp_path / "pickled")
    torch.save(adapter_tensors(other), other / "adapter_model.bin")
    (other / "adapter_model.safetensors").unlink()
    out = tmp_path / "m"
    assert_refused(run(str(other), "--out", str(out)), out, "adapter_model.bin", "safe_serialization=True")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--weights", "1,x"], "'x' is not a number"),
        (["--weights", "1,2,3"], "3 values for 1 adapters"),
        (["--method", "cat", "--rank", "4"], "does not truncate"),
        (["--method", "nope"], "method"),
        (["--set", "sorces.0.path=x"], "sorces: unknown key"),
        (["--set", "noequals"], "expected KEY=VALUE"),
    ],
)
def test_bad_flags(task_adapter, tmp_path, args, fragment):
    out = tmp_path / "m"
    assert_refused(run(str(task_adapter), "--out", str(out), *args), out, fragment)


def test_debug_shows_the_traceback(tmp_path):
    result = run(str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), "--debug")
    assert result.exit_code != 0 and result.exception is not None


def test_a_core_space_method_with_its_keys_and_its_rerunnable_recipe(task_adapter, align_adapter, tmp_path):
    out = tmp_path / "m"
    result = run(str(task_adapter), str(align_adapter), "--method", "iso_cts", "--set", "alpha=1.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "merge_report.json").read_text())
    assert report["settings"] == {"alpha": 1.5, "common_fraction": 0.8, "subspace": "merged", "subspace_beta": 0.25}
    # recipe.yaml holds only what was set, so it reruns as is: no key the method does not read
    again = run("--recipe", str(out / "recipe.yaml"), "--out", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert adapter_tensors(out).keys() == adapter_tensors(tmp_path / "again").keys()


def test_a_key_the_method_does_not_read_is_refused_on_one_line(task_adapter, align_adapter, tmp_path):
    out = tmp_path / "m"
    result = run(str(task_adapter), str(align_adapter), "--set", "density=0.3", "--out", str(out))
    assert_refused(result, out, "does not use 'density'", "ties", "remove it")


def test_a_shared_subspace_merge_needs_a_rank_and_reports_each_tasks_share(task_adapter, align_adapter, tmp_path):
    args = [str(task_adapter), str(align_adapter), "--method", "tsv", "--set", "subspace=shared"]
    assert_refused(run(*args, "--out", str(tmp_path / "no-rank")), tmp_path / "no-rank", "give --rank r")
    result = run(*args, "--rank", "4", "--out", str(tmp_path / "r4"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r4" / "merge_report.json").read_text())
    assert report["settings"]["subspace"] == "shared" and report["rank_max"] == 4
    entry = next(iter(report["modules"].values()))
    assert len(entry["task_retained"]) == len(entry["sources"]) and all(0 < s <= 1.000001 for s in entry["task_retained"])
