"""Scales that overflow (issue 35): every factor that multiplies an update (a method key, a source weight, an input's
own scale) is checked against the update before any work; a merge no float32 or output dtype can hold is a
one-line error naming the factor and its value, exit 2, nothing written, for every method."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.merge.lowrank import frobenius, sum_norms
from loramerge.merge.methods import METHODS
from loramerge.merge.scales import scientific
from tests.helpers import adapter_tensors, copy_adapter, leftovers

runner = CliRunner()


def refused(args: list[str], out: Path, *fragments: str) -> str:
    result = runner.invoke(app, ["merge", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() and leftovers(out.parent) == []
    return lines[0]


def test_the_issues_alpha_of_1e308_is_named_with_the_value_that_fits(
    task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    """Was: 'internal error _LinAlgError: linalg.svd: The algorithm failed to converge', exit 1."""
    line = refused(
        [str(task_adapter), str(align_adapter), "--method", "iso_c", "--set", "alpha=1e308"],
        tmp_path / "m",
        "alpha = 1e+308",
        "too large to represent",
        "float32",
    )
    assert "give it a magnitude below" in line and "internal error" not in line


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_weight_that_overflows_is_refused_by_every_method(task_adapter: Path, tmp_path: Path, method: str) -> None:
    extra = ["--rank", "4"] if METHODS[method].truncates else []
    refused(
        [str(task_adapter), str(task_adapter), "--weights", "1e39,1", "--method", method, *extra],
        tmp_path / "m",
        f"sources.0.weight ({task_adapter}) = 1e+39",
    )


@pytest.mark.parametrize("method", [name for name, info in METHODS.items() if "dare_rescale" in info.keys])
def test_a_density_whose_rescale_overflows_is_named(task_adapter: Path, align_adapter: Path, tmp_path: Path, method: str) -> None:
    """DARE divides the kept entries by the density: 1e-300 multiplies the update by 1e300."""
    args = [str(task_adapter), str(align_adapter), "--method", method, "--set", "density=1e-300"]
    refused(args, tmp_path / "m", "density = 1e-300", "give it above")


def test_the_output_dtype_is_checked_too(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    """A weight float32 holds but float16 does not: was an internal error (NaN or Inf in torch.float16), exit 1."""
    args = [str(task_adapter), str(align_adapter), "--weights", "1e6,1", "--dtype", "float16"]
    refused(args, tmp_path / "m", "sources.0.weight", "= 1e+06", "float16's largest value")
    ok = runner.invoke(
        app, ["merge", str(task_adapter), str(align_adapter), "--weights", "1e6,1", "--out", str(tmp_path / "f32")]
    )
    assert ok.exit_code == 0, ok.output  # the same weight fits float32


def test_a_rule_weight_names_its_rule(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"sources:\n  - path: {task_adapter}\n  - path: {align_adapter}\n    rules:\n"
        "      - modules: 'mlp\\.'\n        weight: 1.0e+39\n"
    )
    line = refused(["--recipe", str(recipe)], tmp_path / "m", f"sources.1.rules.0.weight ({align_adapter}) = 1e+39")
    assert "model.layers.0.mlp" in line or "model.layers.1.mlp" in line  # the align adapter has layers 0 and 1


def test_an_adapters_own_scale_names_its_config(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    scaled = copy_adapter(task_adapter, tmp_path / "scaled")
    config = json.loads((scaled / "adapter_config.json").read_text())
    config["lora_alpha"] = 1e40  # scale 1e40 / 8
    (scaled / "adapter_config.json").write_text(json.dumps(config))
    refused(
        [str(scaled), str(align_adapter)],
        tmp_path / "m",
        f"{scaled / 'adapter_config.json'}: the scale lora_alpha / r = 1.25e+39",
        "lower lora_alpha there",
    )


def test_tensors_that_large_are_called_corrupt(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    huge = copy_adapter(task_adapter, tmp_path / "huge")
    weights = adapter_tensors(huge)
    key = sorted(k for k in weights if "lora_B" in k)[0]
    weights[key] = weights[key] * 1e36  # finite, so the NaN check passes it
    save_file(weights, str(huge / "adapter_model.safetensors"), metadata={"format": "pt"})
    refused([str(huge), str(align_adapter)], tmp_path / "m", f"{huge / 'adapter_model.safetensors'}", "corrupt or diverged")


def test_norms_of_low_rank_sums_match_dense_products_through_cancellation_and_float32_overflow() -> None:
    generator = torch.Generator().manual_seed(0)
    b, a = torch.randn(48, 4, generator=generator), torch.randn(4, 40, generator=generator)
    other_b, other_a = torch.randn(48, 6, generator=generator), torch.randn(6, 40, generator=generator)
    whole, inputs = sum_norms([(b, a, 2.0), (other_b, other_a, -0.5)])
    dense = [2.0 * b.double() @ a.double(), -0.5 * other_b.double() @ other_a.double()]
    assert whole == pytest.approx(float(sum(dense).norm()), rel=1e-5)
    assert inputs == [pytest.approx(float(update.norm()) / abs(k), rel=1e-5) for update, k in zip(dense, (2.0, -0.5))]
    cancelled, _ = sum_norms([(b, a, 1.0), (b, a, -1.0)])  # float32 Grams read ~3e-4 of the input here
    assert cancelled <= 1e-6 * inputs[0]
    large, _ = sum_norms([(b * 1e20, a, 1.0)])  # float32 squares overflow; float64 holds them
    assert large == pytest.approx(float((b.double() @ a.double()).norm()) * 1e20, rel=1e-5)
    assert frobenius(b * 1e20) == pytest.approx(float(b.double().norm()) * 1e20, rel=1e-6)
    assert frobenius(torch.tensor([1.0, float("nan")])) is None and frobenius(torch.tensor([float("inf")])) is None


def test_numbers_beyond_float_range_print_as_numbers() -> None:
    assert scientific(math.log(6.8) + 308 * math.log(10)) == "6.8e+308"
    assert scientific(math.log(4.9e34)) == "4.9e+34" and scientific(-math.inf) == "0"
