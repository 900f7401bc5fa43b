"""What a data command built, as tables on a console: pairs per language and split, task records per split."""

from __future__ import annotations

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


def print_iso_task(task: IsoTask, console: Console) -> None:
    langs = list(dict.fromkeys(lang for counts in task.counts.values() for lang in counts))
    table = Table(title="iso-codes task records")
    table.add_column("split")
    for lang in langs:
        table.add_column(lang, justify="right")
    table.add_column("entities (country/language/currency)", justify="right")
    for name, counts in task.counts.items():
        kinds = "/".join(str(task.kinds[name].get(kind.name, 0)) for kind in KINDS)
        table.add_row(name, *(str(counts.get(lang, "")) for lang in langs), f"{task.entities[name]} ({kinds})")
    console.print(table)
    for name, path in task.files.items():
        console.print(f"{name}: {path}")


def print_topic_task(task: TopicTask, console: Console) -> None:
    langs = list(dict.fromkeys(lang for counts in task.counts.values() for lang in counts))
    table = Table(title="topic task records")
    table.add_column("split")
    for lang in langs:
        table.add_column(lang, justify="right")
    table.add_column(f"sentences ({'/'.join(TOPICS)})", justify="right")
    for name, counts in task.counts.items():
        labels = "/".join(str(task.per_label[name].get(label, 0)) for label in TOPICS)
        table.add_row(name, *(str(counts.get(lang, "")) for lang in langs), f"{sum(task.per_label[name].values())} ({labels})")
    console.print(table)
    console.print(f"left out: {task.ambiguous} sentences found in catalogs of two labels")
    for name, path in task.files.items():
        console.print(f"{name}: {path}")
    console.print("The catalogs are GPL/LGPL licensed: keep the extracted files out of version control and releases.")
