"""`loramerge eval`: task scores per language of the base model and its adapters, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loramerge.cli.options import DebugOption, OverwriteOption
from loramerge.cli.support import console, run_safely


def eval_command(
    model: Annotated[str, typer.Option("--model", help="Local model folder, org/name[@revision] or bundled:NAME.")],
    data: Annotated[Path, typer.Option("--data", help="Task test set (JSONL: prompt/completion or messages, lang).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json, report.md, scores.png, predictions/.")],
    adapter: Annotated[
        Optional[list[str]], typer.Option("--adapter", help="PEFT adapter folder, PATH or NAME=PATH (repeatable).")
    ] = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="Leave out the base model without adapters.")] = False,
    metric: Annotated[str, typer.Option("--metric", help="exact (JSON-aware), chrf (corpus-level) or f1 (token F1).")] = "exact",
    supervised: Annotated[
        Optional[str], typer.Option("--supervised", help="Languages the task adapter was trained on, e.g. en,de.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated together.")] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer, in tokens.")] = 32,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")] = "float32",
    precision: Annotated[
        str, typer.Option("--precision", help="Autocast of matrix products: no, bf16, or auto (bf16 where measured faster).")
    ] = "no",
    overwrite: OverwriteOption = False,
    debug: DebugOption = False,
) -> None:
    """Task scores per language (greedy generation) of the base model and each adapter, side by side."""
    from loramerge.evaluate.run import EvalSettings, run_eval

    settings = EvalSettings(
        model=model,
        data=data,
        out=out,
        adapters=tuple(adapter or ()),
        include_base=not no_base,
        metric=metric,
        supervised=supervised,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        precision=precision,
        overwrite=overwrite,
    )
    run_safely(debug, lambda: run_eval(settings, console))
    console.print(f"evaluation written to {out}")
