"""Merges that cancel (issue 35): merge_report.json gives each module's output norm relative to its largest input's
own norm; a merge (or module) below 1e-3 of it warns on stderr and in the report, naming the modules, an all-zero
one louder; exit 0, unless --strict (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.errors import LoramergeError
from loramerge.merge.engine import merge_adapters
from tests.helpers import adapter_tensors, leftovers

runner = CliRunner()


def merge(*args: str):
    return runner.invoke(app, ["merge", *args])


def report_of(out: Path) -> dict:
    return json.loads((out / "merge_report.json").read_text())


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.mark.parametrize("method", ["cat", "svd", "tsv", "iso_c", "iso_cts", "ties", "knots_ties", "core_ties"])
def test_an_adapter_minus_itself_warns_loudly_and_still_writes(task_adapter: Path, tmp_path: Path, method: str) -> None:
    """The issue's case: was exit 0, 'max relative error 0.00e+00' and nothing else said."""
    out = tmp_path / "m"
    extra = ["--rank", "8"] if method in ("svd", "ties") else []
    result = merge(str(task_adapter), str(task_adapter), "--weights", "1,-1", "--method", method, *extra, "--out", str(out))
    assert result.exit_code == 0, result.output
    stderr = flat(result.stderr)
    assert "warning: the merged adapter is ZERO" in stderr and "changes nothing" in stderr
    report = report_of(out)
    assert report["cancellation"]["zero"] and report["warnings"][0].startswith("the merged adapter is ZERO")
    assert len(report["cancellation"]["modules"]) == report["modules_merged"]  # each module named
    assert all(entry["relative_norm"] < 1e-6 for entry in report["modules"].values())


def test_a_near_cancellation_names_the_modules(task_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = merge(str(task_adapter), str(task_adapter), "--weights", "1,-0.9999", "--out", str(out))
    assert result.exit_code == 0, result.output
    stderr = flat(result.stderr)
    assert "keep less than 0.001 of their largest input's norm (model.layers.0." in stderr
    assert "the whole merge keeps 1.0e-04" in stderr and "ZERO" not in stderr
    report = report_of(out)
    assert not report["cancellation"]["zero"] and report["cancellation"]["relative_norm"] == pytest.approx(1e-4, rel=1e-3)
    assert report["warnings"][0].startswith(f"{report['modules_merged']} of {report['modules_merged']} merged modules")


def test_only_the_modules_that_cancel_are_named(task_adapter: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"sources:\n  - path: {task_adapter}\n  - path: {task_adapter}\n    weight: 0.5\n    rules:\n"
        "      - modules: 'mlp\\.'\n        weight: -1.0\n"
    )
    out = tmp_path / "m"
    result = merge("--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_of(out)
    cancelled = report["cancellation"]["modules"]
    assert cancelled and all(".mlp." in name for name in cancelled)
    assert len(cancelled) == sum(".mlp." in name for name in report["modules"])
    assert report["cancellation"]["relative_norm"] > 1e-3  # the whole merge keeps the attention modules
    assert "the whole merge keeps" not in flat(result.stderr) and "merged modules keep less than 0.001" in flat(result.stderr)


def test_every_module_reports_its_norm_against_its_largest_input(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    """cat's update is the exact weighted sum: check the reported norms against dense products of the inputs."""
    out = tmp_path / "m"
    result = merge(str(task_adapter), str(align_adapter), "--weights", "1,-0.5", "--out", str(out))
    assert result.exit_code == 0 and "warning: the merged" not in result.stderr and "keep less" not in flat(result.stderr)
    report, merged = report_of(out), adapter_tensors(out)
    task, align = adapter_tensors(task_adapter), adapter_tensors(align_adapter)
    name = "model.layers.1.mlp.down_proj"  # in both; the align adapter's rank 2 there (rank_pattern), rsLoRA
    entry, key = report["modules"][name], f"base_model.model.{name}"
    inputs = [  # each input's own update, its weight aside
        (t[f"{key}.lora_B.weight"].double() @ t[f"{key}.lora_A.weight"].double()) * scale
        for t, scale in ((task, 16 / 8), (align, 8 / 2**0.5))
    ]
    output = merged[f"{key}.lora_B.weight"].double() @ merged[f"{key}.lora_A.weight"].double()
    assert float((output - inputs[0] + 0.5 * inputs[1]).norm()) < 1e-5 * float(output.norm())  # cat: the weighted sum
    assert entry["norm"] == pytest.approx(float(output.norm()), rel=1e-5)
    assert entry["input_norms"] == [pytest.approx(float(update.norm()), rel=1e-5) for update in inputs]
    assert entry["relative_norm"] == pytest.approx(float(output.norm() / max(u.norm() for u in inputs)), rel=1e-5)


def test_strict_refuses_a_merge_that_cancels_and_writes_nothing(task_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = merge(str(task_adapter), str(task_adapter), "--weights", "1,-1", "--strict", "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the merged adapter is ZERO") and "--strict" in lines[0]
    assert not out.exists() and leftovers(tmp_path) == []
    fine = merge(str(task_adapter), str(task_adapter), "--weights", "1,0.5", "--strict", "--out", str(out))
    assert fine.exit_code == 0 and out.is_dir()


def test_strict_in_python_keeps_an_existing_output(task_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    merge_adapters({"sources": [{"path": str(task_adapter)}]}, out)
    before = (out / "adapter_model.safetensors").read_bytes()
    recipe = {"sources": [{"path": str(task_adapter)}, {"path": str(task_adapter), "weight": -0.99999}]}
    with pytest.raises(LoramergeError, match="keep less than 0.001"):
        merge_adapters(recipe, out, overwrite=True, strict=True)
    assert (out / "adapter_model.safetensors").read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "flags, warned",
    [
        (["--weights", "1e-30,1e-30"], "the merged adapter is ZERO"),  # measured against the weighted inputs: 1.0
        (["--weights", "1e-4,1e-4"], "keep less than 0.001"),
        (["--weights", "1e30,1e30", "--method", "ties"], None),  # TIES divides by the weights: was called ZERO
        (["--weights", "0.01,0.01"], None),
    ],
)
def test_the_inputs_own_norms_are_the_measure(task_adapter: Path, align_adapter: Path, tmp_path: Path, flags, warned) -> None:
    out = tmp_path / "m"
    result = merge(str(task_adapter), str(align_adapter), *flags, "--out", str(out))
    assert result.exit_code == 0, result.output
    stderr = flat(result.stderr)
    if warned is None:
        assert "ZERO" not in stderr and "keep less" not in stderr and not report_of(out)["cancellation"]["modules"]
    else:
        assert warned in stderr


def test_modules_weighted_zero_everywhere_are_asked_for_not_cancelled(
    task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yaml"
    zero_mlp = "    rules:\n      - modules: 'mlp\\.'\n        weight: 0.0\n"
    recipe.write_text(f"sources:\n  - path: {task_adapter}\n{zero_mlp}  - path: {align_adapter}\n{zero_mlp}")
    out = tmp_path / "m"
    result = merge("--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert all(entry["norm"] == 0 for name, entry in report["modules"].items() if ".mlp." in name)
    assert report["cancellation"]["modules"] == [] and "keep less" not in flat(result.stderr)
