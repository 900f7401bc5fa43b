"""`precision: auto` and bf16 autocast on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramerge.models.precision import BF16_MIN_SPEEDUP, choose_precision, cpu_flags, measured_bf16_speedup
from loramerge.recipes import load_recipe
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import train_adapter


def test_auto_picks_bf16_where_it_was_measured_faster_enough():
    assert choose_precision("auto", cuda_bf16=False, bf16_speedup=0.56) == "no"  # the project's Xeon, no AMX
    assert choose_precision("auto", cuda_bf16=False, bf16_speedup=2.3) == "bf16"  # an AMD EPYC with avx512_bf16
    assert choose_precision("auto", cuda_bf16=False, bf16_speedup=BF16_MIN_SPEEDUP) == "bf16"
    assert choose_precision("auto", cuda_bf16=False, bf16_speedup=BF16_MIN_SPEEDUP - 0.01) == "no"
    assert choose_precision("auto", cuda_bf16=True, bf16_speedup=None) == "bf16"
    assert choose_precision("auto", cuda_bf16=False, bf16_speedup=None) == "no"
    assert choose_precision("no", cuda_bf16=True, bf16_speedup=4.7) == "no"  # an explicit choice is kept
    assert choose_precision("fp16", cuda_bf16=False, bf16_speedup=0.5) == "fp16"


def test_the_probe_runs_once_per_machine_and_is_read_back(tmp_path):
    first = measured_bf16_speedup(tmp_path)
    (written,) = (tmp_path / "machine").glob("bf16-*.json")
    assert first > 0 and json.loads(written.read_text())["speedup"] == round(first, 3)
    written.write_text(json.dumps({"speedup": 9.5}))  # a cached answer is used as it is, not measured again
    assert measured_bf16_speedup(tmp_path) == 9.5
    written.write_text("not json")  # a damaged cache is measured again and rewritten
    assert measured_bf16_speedup(tmp_path) != 9.5 and json.loads(written.read_text())["speedup"] > 0


def test_cpu_flags_are_read_from_this_machine():
    flags = cpu_flags()
    assert not Path("/proc/cpuinfo").is_file() or flags  # Linux: some flags; elsewhere: none


def first_task_loss(out: Path) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(row["task_loss"] for row in rows if "task_loss" in row)


@pytest.mark.parametrize("architecture", ["gemma3"])
def test_bf16_autocast_on_cpu_trains_within_bf16_rounding_of_float32(tiny_model_dir, example_data, tmp_path, architecture):
    flags = {"model": str(tiny_model_dir(architecture)), "data": str(example_data["task"]), "max_steps": 2, "log_every": 1}
    results = {}
    for precision in ("no", "bf16"):
        recipe = load_recipe(TrainRecipe, Path("recipes/tiny/tiny-task.yaml"), flags=flags)
        recipe.precision = precision
        results[precision] = train_adapter(recipe, "task", tmp_path / precision)
        assert results[precision].out is not None
    card = (results["bf16"].out / "README.md").read_text()
    assert "| precision | bf16 |" in card
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per product): the loss moves by about that much
    first, reference = first_task_loss(tmp_path / "bf16"), first_task_loss(tmp_path / "no")
    assert first != reference and abs(first - reference) / reference < 2e-2
