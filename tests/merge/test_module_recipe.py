"""The shipped transfer-module recipe (recipes/module/merge-module.yaml): (joint - task-only) of a reference task,
the blocks below the aligned layer only, as PEFT applies it."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from loramerge.merge.engine import merge_adapters
from loramerge.recipes import apply_override, read_recipe_file
from loramerge.testing.tiny import load_model

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "module" / "merge-module.yaml"


def weight_updates(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """Each linear weight's change when PEFT merges the adapter into the base model."""
    before = {name: p.detach().clone() for name, p in load_model(base).named_parameters()}
    after = PeftModel.from_pretrained(load_model(base), str(adapter)).merge_and_unload()
    return {name: p.detach() - before[name] for name, p in after.named_parameters() if name.endswith("proj.weight")}


def test_module_is_joint_minus_task_below_the_aligned_layer(tiny_base, make_adapter, tmp_path):
    joint = make_adapter("module-joint", seed=11, r=8, lora_alpha=16)
    task = make_adapter("module-task", seed=12, r=8, lora_alpha=16)
    recipe = read_recipe_file(RECIPE)
    recipe["sources"][0]["path"], recipe["sources"][1]["path"] = str(joint), str(task)
    # The tiny model has 4 blocks; the shipped rule zeroes blocks 9-17 of Gemma-3-270M's 18. Moving the rule's
    # range (and nothing else) keeps the recipe's weights and structure under test.
    for index in (0, 1):
        apply_override(recipe, f"sources.{index}.rules.0.layers=2-")
    merge_adapters(recipe, tmp_path / "module")

    module = weight_updates(tiny_base, tmp_path / "module")
    task_updates = weight_updates(tiny_base, task)
    expected = {name: update - task_updates[name] for name, update in weight_updates(tiny_base, joint).items()}
    below = [name for name in module if ".layers.0." in name or ".layers.1." in name]
    above = [name for name in module if ".layers.2." in name or ".layers.3." in name]
    assert len(below) == len(above) == 14  # 7 projections a block, 2 blocks each
    for name in below:
        torch.testing.assert_close(module[name], expected[name], atol=1e-6, rtol=1e-5)
        assert expected[name].norm() > 0.01  # the two adapters differ: the check could fail
    for name in above:
        assert module[name].abs().max() == 0.0
