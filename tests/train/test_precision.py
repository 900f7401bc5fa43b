"""`precision: auto` and bf16 autocast on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramerge.recipes import load_recipe
from loramerge.train.precision import choose_precision, cpu_flags
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import train_adapter

AVX512_ONLY = frozenset({"avx2", "avx512f", "avx512_bf16"})  # this project's Xeon: bf16 instructions, no tiles
AMX = AVX512_ONLY | {"amx_tile", "amx_bf16", "amx_int8"}


def test_auto_picks_bf16_only_where_bf16_matrix_units_exist():
    assert choose_precision("auto", cuda_bf16=False, flags=AVX512_ONLY) == "no"  # bf16 matmul 0.55x fp32 there
    assert choose_precision("auto", cuda_bf16=False, flags=AMX) == "bf16"
    assert choose_precision("auto", cuda_bf16=True, flags=frozenset()) == "bf16"
    assert choose_precision("auto", cuda_bf16=False, flags=frozenset()) == "no"
    assert choose_precision("no", cuda_bf16=True, flags=AMX) == "no"  # an explicit choice is kept
    assert choose_precision("fp16", cuda_bf16=False, flags=AVX512_ONLY) == "fp16"


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
