"""`loramerge train-align` and `loramerge train-task`: flags -> TrainRecipe -> train_adapter."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from loramerge.cli.hub import PushToOption, check_push_target, push_output
from loramerge.cli.options import DebugOption, OverwriteOption
from loramerge.cli.support import console, run_safely
from loramerge.errors import LoramergeError

ModelOption = Annotated[Optional[str], typer.Option("--model", help="Local model folder or org/name[@revision].")]
OutOption = Annotated[Path, typer.Option("--out", help="Folder for the adapter; checkpoints go to <out>.run/.")]
PairsOption = Annotated[
    Optional[str], typer.Option("--pairs", help="Parallel sentences: JSONL {source, target} or two-column TSV.")
]
RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", help="YAML training recipe.")]
OverridesOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set optimizer.learning_rate=1e-4.")
]
StepsOption = Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps (overrides epochs).")]
SeedOption = Annotated[Optional[int], typer.Option("--seed", help="Seed for LoRA init, data order and dropout.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in <out>.run/.")]


def parse_layer(layer: str | None) -> int | str | None:
    if layer is None or layer == "auto":
        return layer
    if not layer.isdigit():
        raise LoramergeError(f"--layer {layer!r}: expected a layer number or 'auto'")
    return int(layer)


def resume_command() -> str:
    """This very command line with --resume (and without --overwrite, which would start over)."""
    arguments = [argument for argument in sys.argv[1:] if argument not in ("--resume", "--overwrite")]
    return shlex.join(["loramerge", *arguments, "--resume"])


def run_training(
    mode: str,
    recipe_path: Path | None,
    overrides: list[str] | None,
    flags: dict[str, Any],
    out: Path,
    resume: bool,
    overwrite: bool,
    push_to: str | None = None,
) -> None:
    from loramerge.recipes import load_recipe
    from loramerge.train.recipe import TrainRecipe
    from loramerge.train.run import shutdown_distributed, train_adapter  # torch etc. load only when training

    check_push_target(push_to)
    recipe = load_recipe(TrainRecipe, recipe_path, overrides, flags)
    try:
        result = train_adapter(recipe, mode, out, overwrite=overwrite, resume=resume)  # type: ignore[arg-type]
    finally:
        shutdown_distributed()
    if not result.is_main:
        return
    table = Table(show_header=False, box=None)
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("optimizer steps", str(result.state.step))
    console.print(table)
    if result.out is None:
        print(
            f"interrupted at step {result.state.step}: checkpoint saved in {result.run_dir}; continue with: {resume_command()}",
            file=sys.stderr,
        )
        raise typer.Exit(130)
    console.print(f"adapter written to {result.out}")
    if recipe.lora.use_rslora:  # the servers' scaling differs from PEFT's for rsLoRA (docs/serving.md)
        console.print(
            f"[yellow]warning:[/yellow] rsLoRA: llama.cpp applies this adapter at 1/sqrt(r) of its strength; "
            f"`loramerge export {result.out} --out {result.out}-portable` writes one that every server applies alike",
            soft_wrap=True,  # a command to copy: never broken across lines
        )
    if push_to is not None:
        push_output(result.out, push_to)


def train_align(
    out: OutOption,
    model: ModelOption = None,
    pairs: PairsOption = None,
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", help="hidden_states index k to align (default round(L/2)); 'auto' picks the best on eval_pairs."),
    ] = None,
    recipe: RecipeOption = None,
    overrides: OverridesOption = None,
    max_steps: StepsOption = None,
    seed: SeedOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    push_to: PushToOption = None,
    debug: DebugOption = False,
) -> None:
    """Train an alignment LoRA: InfoNCE on mean-pooled layer-k states of translation pairs."""

    def action() -> None:
        flags = {"model": model, "pairs": pairs, "align.layer": parse_layer(layer), "max_steps": max_steps, "seed": seed}
        run_training("align", recipe, overrides, flags, out, resume, overwrite, push_to)

    run_safely(debug, action)


def train_task(
    out: OutOption,
    model: ModelOption = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Task JSONL: {prompt, completion} or {messages}.")] = None,
    pairs: PairsOption = None,
    recipe: RecipeOption = None,
    overrides: OverridesOption = None,
    max_steps: StepsOption = None,
    seed: SeedOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    push_to: PushToOption = None,
    debug: DebugOption = False,
) -> None:
    """Train a task LoRA (SFT); with --pairs, jointly with the alignment objective (alternating batches)."""

    def action() -> None:
        flags = {"model": model, "data": data, "pairs": pairs, "max_steps": max_steps, "seed": seed}
        run_training("task", recipe, overrides, flags, out, resume, overwrite, push_to)

    run_safely(debug, action)
