"""What a data command built, as tables on a console: pairs per language and split, task records per split."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from loramerge.data.corpora import Extraction
from loramerge.data.isocodes import KINDS, IsoTask
from loramerge.data.topics import TOPICS, TopicTask


def print_extraction(extraction: Extraction, seconds: float, console: Console) -> None:
    splits = list(extraction.counts)
    table = Table(title=f"en -> X pairs ({seconds:.1f} s)")
    table.add_column("language")
    table.add_column("catalogs", justify="right")
    for name in splits:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for language in extraction.languages:
        row = [extraction.counts[name].get(language.lang, 0) for name in splits]
        table.add_row(language.lang, str(language.catalogs), *(f"{n:,}" for n in row), f"{sum(row):,}")
    sources = [extraction.sources[name] for name in splits]
    table.add_row("English sentences", "", *(f"{n:,}" for n in sources), f"{sum(sources):,}", style="bold")
    console.print(table)
    dropped: dict[str, int] = {}
    for language in extraction.languages:
        for reason, count in language.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    console.print("dropped: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(dropped.items()) if count))
    unreadable = [entry for language in extraction.languages for entry in language.unreadable]
    for entry in unreadable:
        console.print(f"[yellow]warning:[/yellow] skipped unreadable catalog {entry}")
    for name, path in extraction.files.items():
        console.print(f"{name}: {path}")
    console.print("The catalogs are GPL/LGPL licensed: keep the extracted files out of version control and releases.")


def print_task_records(
    title: str,
    counts: dict[str, dict[str, int]],
    groups: str,
    per_split: dict[str, str],
    files: dict[str, Path],
    console: Console,
) -> None:
    """Records per split and language, with a last column of `groups` per split (entities or sentences)."""
    langs = list(dict.fromkeys(lang for split_counts in counts.values() for lang in split_counts))
    table = Table(title=title)
    table.add_column("split")
    for lang in langs:
        table.add_column(lang, justify="right")
    table.add_column(groups, justify="right")
    for name, split_counts in counts.items():
        table.add_row(name, *(str(split_counts.get(lang, "")) for lang in langs), per_split[name])
    console.print(table)
    for name, path in files.items():
        console.print(f"{name}: {path}")


def print_iso_task(task: IsoTask, console: Console) -> None:
    per_split = {
        name: f"{task.entities[name]} ({'/'.join(str(task.kinds[name].get(kind.name, 0)) for kind in KINDS)})"
        for name in task.counts
    }
    print_task_records(
        "iso-codes task records", task.counts, "entities (country/language/currency)", per_split, task.files, console
    )


def print_topic_task(task: TopicTask, console: Console) -> None:
    per_split = {
        name: f"{sum(task.per_label[name].values())} ({'/'.join(str(task.per_label[name].get(label, 0)) for label in TOPICS)})"
        for name in task.counts
    }
    print_task_records("topic task records", task.counts, f"sentences ({'/'.join(TOPICS)})", per_split, task.files, console)
    console.print(f"left out: {task.ambiguous} sentences found in catalogs of two labels")
    console.print("The catalogs are GPL/LGPL licensed: keep the extracted files out of version control and releases.")
