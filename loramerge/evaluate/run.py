"""`loramerge eval` as a library call: check every input, load the base once, score each variant, write the results.

The command line (`loramerge.cli.eval`), the demo and `merge --search` share it; progress goes to the given console.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.data.records import read_task_file
from loramerge.errors import LoramergeError
from loramerge.evaluate.adapter_check import resolve_and_check
from loramerge.evaluate.evaluator import Evaluator
from loramerge.evaluate.metrics import UNDETERMINED, get_metric
from loramerge.evaluate.report import build_results, table_cells, write_outputs
from loramerge.output_lock import output_lock
from loramerge.parsing import comma_list

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


def check_supervised_in_data(supervised: list[str] | None, records: list[Any], data: Path) -> None:
    """A supervised language the data lacks would make a mean over fewer languages than the user meant."""
    present = {record.lang or UNDETERMINED for record in records}
    missing = [lang for lang in supervised or [] if lang not in present]
    if missing:
        raise LoramergeError(
            f"--supervised {','.join(missing)}: no record of {data} has that language (it has {', '.join(sorted(present))}); "
            "name the task adapter's training languages as the data spells them"
        )


def print_summary(results: dict[str, Any], console: Console) -> None:
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
    precision: str = "no"  # autocast of the matrix products: no, bf16, or auto (bf16 where measured faster)
    overwrite: bool = False


def run_eval(settings: EvalSettings, console: Console) -> dict[str, Any]:
    # Every input is checked before the model loads, so a mistake costs no waiting.
    with output_lock(settings.out):
        if (problem := output_dir_problem(settings.out, settings.overwrite)) is not None:
            raise LoramergeError(problem)
        get_metric(settings.metric)
        paths = resolve_and_check(parse_adapter_specs(list(settings.adapters)))
        if not settings.include_base and not paths:
            raise LoramergeError("--no-base without --adapter leaves nothing to evaluate; add an --adapter or drop --no-base")
        supervised = parse_supervised(settings.supervised)
        records = read_task_file(settings.data)
        check_supervised_in_data(supervised, records, settings.data)

        evaluator = Evaluator(
            settings.model, settings.metric, settings.batch_size, settings.max_new_tokens, settings.dtype, settings.precision
        )
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
            "precision": evaluator.precision,
            "decoding": "greedy" if settings.metric != "exact" else "greedy, decided by one teacher-forced pass where it can be",
            "generated_items": evaluator.generated_items,
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
