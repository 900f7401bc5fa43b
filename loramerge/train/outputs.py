"""What a finished run leaves: the PEFT adapter, recipe.yaml, the model card, metrics.jsonl and
train_summary.json, staged and renamed into place as one folder; then the run folder goes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from loramerge.atomic import atomic_directory
from loramerge.faults import crash_point
from loramerge.hub.card import TrainingSummary, render_training_card
from loramerge.recipes import dump_recipe
from loramerge.train.recipe import TrainRecipe


def hyperparameters(recipe: TrainRecipe, align_layer: int | None, steps: int, processes: int, precision: str) -> dict[str, str]:
    """The card's table; `precision` is what the run used (accelerate's mixed_precision), `auto` resolved."""
    values: dict[str, Any] = {
        "LoRA r / alpha / dropout": f"{recipe.lora.r} / {recipe.lora.alpha:g} / {recipe.lora.dropout:g}",
        "target modules": ", ".join(recipe.lora.target_modules),
        "optimizer steps": steps,
        "micro-batch x accumulation x processes": f"{recipe.batch_size} x {recipe.grad_accum} x {processes}",
        "learning rate / schedule": f"{recipe.optimizer.learning_rate:g} / {recipe.optimizer.schedule}",
        "precision": precision if precision == recipe.precision else f"{precision} ({recipe.precision})",
        "seed": recipe.seed,
    }
    if align_layer is not None:
        values["alignment layer (hidden_states index)"] = align_layer
        values["temperature / symmetric / skip first token"] = (
            f"{recipe.align.temperature:g} / {recipe.align.symmetric} / {recipe.align.skip_first_token}"
        )
    return {key: str(value) for key, value in values.items()}


def write_outputs(
    peft_model: PeftModel,
    recipe: TrainRecipe,
    summary: TrainingSummary,
    out: Path,
    run_dir: Path,
    languages: list[str],
    adapter_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """adapter_weights: the gathered LoRA tensors of a sharded (FSDP) model; None: PEFT reads them from its model."""
    recipe_yaml = dump_recipe(recipe)
    base_model = peft_model.peft_config["default"].base_model_name_or_path
    with atomic_directory(out) as staging:
        peft_model.save_pretrained(staging, state_dict=adapter_weights)
        crash_point("train:final-write")
        (staging / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (staging / "README.md").write_text(render_training_card(summary, recipe_yaml, base_model, languages), encoding="utf-8")
        if (run_dir / "metrics.jsonl").exists():
            shutil.copy2(run_dir / "metrics.jsonl", staging / "metrics.jsonl")
        (staging / "train_summary.json").write_text(
            json.dumps(
                {"final": summary.final_metrics, "base_model": {"name": base_model, "commit": summary.base_commit}}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
    shutil.rmtree(run_dir, ignore_errors=True)
