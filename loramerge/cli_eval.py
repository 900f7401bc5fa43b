"""`loramerge eval`: task scores per language of the base model and its adapters, side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from loramerge.cli_support import comma_list, console, run_safely
from loramerge.errors import LoramergeError

BASE = "base"  # the variant name of the model without adapters


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """NAME=PATH or PATH (named after its folder) -> {name: path}; names must be unique and usable as file names."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or Path(spec).exists():  # an existing path with "=" in it is a path
            name, path = Path(spec).name, spec
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise LoramergeError(f"--adapter {spec!r}: {name!r} is not a usable name; write NAME=PATH with a name such as task")
        if name == BASE or name in adapters:
            reason = "is the base model's name" if name == BASE else "is given twice"
            raise LoramergeError(f"--adapter {spec!r}: the name {name!r} {reason}; write NAME=PATH to give it another name")
        adapters[name] = Path(path)
    return adapters


def parse_supervised(text: str | None) -> list[str] | None:
    if text is None:
        return None
    languages = list(comma_list(text))
    if not languages:
        raise LoramergeError(f"--supervised {text!r}: give comma-separated language codes, e.g. --supervised en,de")
    return languages


def print_summary(results: dict[str, Any], console: Console) -> None:
    from loramerge.eval_report import table_cells

    header, rows = table_cells(results)
    table = Table(*header, title=f"{results['metric']['description']} (%)")
    for row in rows:
        table.add_row(*row, style="bold" if row[1] == "mean" else None)
    console.print(table)


@dataclass(frozen=True)
class EvalSettings:
    model: str
    data: Path
    out: Path
    adapters: tuple[str, ...] = ()  # --adapter specs: PATH or NAME=PATH
    include_base: bool = True
    metric: str = "exact"
    supervised: str | None = None  # comma-separated languages
    batch_size: int = 16
    max_new_tokens: int = 32
    dtype: str = "float32"
    overwrite: bool = False


def run_eval(settings: EvalSettings, console: Console) -> dict[str, Any]:
    from loramerge.atomic import atomic_directory, output_dir_problem
    from loramerge.data import read_task_file
    from loramerge.eval_report import build_results, write_outputs
    from loramerge.evaluate import Evaluator, check_adapter_folder
    from loramerge.task_metrics import get_metric

    # Every input is checked before the model loads, so a mistake costs no waiting.
    if (problem := output_dir_problem(settings.out, settings.overwrite)) is not None:
        raise LoramergeError(problem)
    get_metric(settings.metric)
    paths = parse_adapter_specs(list(settings.adapters))
    for path in paths.values():
        check_adapter_folder(path)
    if not settings.include_base and not paths:
        raise LoramergeError("--no-base without --adapter leaves nothing to evaluate; add an --adapter or drop --no-base")
    supervised = parse_supervised(settings.supervised)
    records = read_task_file(settings.data)

    evaluator = Evaluator(settings.model, settings.metric, settings.batch_size, settings.max_new_tokens, settings.dtype)
    for name, path in paths.items():
        evaluator.add_adapter(name, path)
    variants: dict[str, str | None] = {BASE: None} if settings.include_base else {}
    variants.update({name: name for name in paths})
    columns = (TextColumn("evaluating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("", total=len(records) * len(variants))
        scores = {}
        for label, variant in variants.items():
            progress.update(task, description=label)
            scores[label] = evaluator.evaluate(variant, records, on_batch=lambda n: progress.advance(task, n))
    recorded = {
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.max_new_tokens,
        "dtype": settings.dtype,
        "decoding": "greedy",
        "stop_tokens": evaluator.stop_tokens,
        "adapters": {name: str(path) for name, path in paths.items()},
    }
    results = build_results(settings.model, settings.data, evaluator.metric, supervised, recorded, scores)
    with atomic_directory(settings.out) as staging:
        notes = write_outputs(staging, results, scores)
    print_summary(results, console)
    for note in notes:
        console.print(f"[yellow]warning:[/yellow] {note}")
    return results


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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    """Task scores per language (greedy generation) of the base model and each adapter, side by side."""
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
        overwrite=overwrite,
    )
    run_safely(debug, lambda: run_eval(settings, console))
    console.print(f"evaluation written to {out}")
