"""`loramerge data gettext` (parallel sentences), `loramerge data isocodes` (the cross-lingual demo task) and `loramerge data topics` (a task built for skill
transfer: which kind of program a UI sentence comes from)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from loramerge.cli.options import DebugOption, OverwriteFilesOption
from loramerge.cli.support import console, run_safely
from loramerge.data.corpora import DEFAULT_ROOT, DEFAULT_SPLIT, FilterSettings, extract_gettext
from loramerge.data.isocodes import DEFAULT_JSON_ROOT, build_iso_task
from loramerge.data.isocodes import DEFAULT_SPLIT as ISO_SPLIT
from loramerge.data.summaries import print_extraction, print_iso_task, print_topic_task
from loramerge.data.topics import DEFAULT_SPLIT as TOPIC_SPLIT
from loramerge.data.topics import DEFAULT_TRAIN_PER_LABEL, build_topic_task
from loramerge.errors import LoramergeError
from loramerge.parsing import comma_list

data_app = typer.Typer(help="Build training data from what is already on this machine.", no_args_is_help=True)


def parse_langs(text: str, flag: str = "--langs") -> list[str]:
    langs = list(comma_list(text))
    if not langs:
        raise LoramergeError(f"{flag} {text!r}: give comma-separated locale names, e.g. {flag} fr,de,ja,zh_CN")
    return langs


@data_app.command("gettext")
def gettext_pairs(
    langs: Annotated[str, typer.Option("--langs", help="Target languages as locale folders name them: fr,de,ja,zh_CN,pt_BR.")],
    out: Annotated[
        Path, typer.Option("--out", help="pairs.jsonl -> pairs-train.jsonl, pairs-dev.jsonl, pairs-test.jsonl beside it.")
    ],
    split: Annotated[
        str, typer.Option("--split", help="train:dev:test proportions by English sentence; '1' writes --out alone.")
    ] = DEFAULT_SPLIT,
    min_words: Annotated[int, typer.Option("--min-words", help="Fewest words in the English sentence.")] = 4,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Most characters in sentence and translation.")] = 200,
    multiway: Annotated[
        bool, typer.Option("--multiway", help="Keep only English sentences translated into every --langs language.")
    ] = False,
    exclude: Annotated[
        Optional[str], typer.Option("--exclude", help="Comma-separated catalog names to skip (globs), e.g. 'iso_*'.")
    ] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Locale folder (default /usr/share/locale).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (a hash of each sentence).")] = 0,
    overwrite: OverwriteFilesOption = False,
    debug: DebugOption = False,
) -> None:
    """English -> X sentence pairs from the gettext catalogs (.mo) of the installed programs, as JSONL
    {source, target, source_lang, target_lang}, split by English sentence so none crosses splits."""

    def action() -> None:
        started = time.perf_counter()
        extraction = extract_gettext(
            parse_langs(langs),
            out,
            root=root or DEFAULT_ROOT,
            split=split,
            settings=FilterSettings(min_words=min_words, max_chars=max_chars, exclude=comma_list(exclude)),
            multiway=multiway,
            seed=seed,
            overwrite=overwrite,
        )
        print_extraction(extraction, time.perf_counter() - started, console)

    run_safely(debug, action)


@data_app.command("isocodes")
def isocodes_task(
    supervised: Annotated[str, typer.Option("--supervised", help="Languages with training data, e.g. en,fr.")],
    transfer: Annotated[str, typer.Option("--transfer", help="Languages seen only in dev/test, e.g. ru,zh_CN,ja,ko.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for train.jsonl, dev.jsonl and test.jsonl.")],
    split: Annotated[str, typer.Option("--split", help="train:dev:test proportions by ISO entity.")] = ISO_SPLIT,
    root: Annotated[Optional[Path], typer.Option("--root", help="Locale folder (default /usr/share/locale).")] = None,
    iso_root: Annotated[Optional[Path], typer.Option("--iso-root", help="iso-codes JSON folder.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (a hash of each entity).")] = 0,
    align_pairs: Annotated[
        Optional[str],
        typer.Option(
            "--align-pairs",
            help="Also write align-train.jsonl: English <-> these languages' names of the TRAIN entities (in-domain "
            "alignment pairs, no labels, no dev/test entity), e.g. ru,zh_CN,ja.",
        ),
    ] = None,
    overwrite: OverwriteFilesOption = False,
    debug: DebugOption = False,
) -> None:
    """A cross-lingual task from the iso-codes tables: a country, language or currency name in language X -> its
    ISO code as JSON ({"country": "DE"}); test and dev items are the same entities in every language."""

    def action() -> None:
        task = build_iso_task(
            parse_langs(supervised, "--supervised"),
            list(comma_list(transfer)),
            out,
            split=split,
            seed=seed,
            locale_root=root or DEFAULT_ROOT,
            json_root=iso_root or DEFAULT_JSON_ROOT,
            overwrite=overwrite,
            align_langs=list(comma_list(align_pairs)) if align_pairs else None,
        )
        print_iso_task(task, console)

    run_safely(debug, action)


@data_app.command("topics")
def topics_task(
    supervised: Annotated[str, typer.Option("--supervised", help="Languages with training data, e.g. en.")],
    transfer: Annotated[str, typer.Option("--transfer", help="Languages seen only in dev/test, e.g. fr,de,ja,ru,zh_CN.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for train.jsonl, dev.jsonl and test.jsonl.")],
    split: Annotated[str, typer.Option("--split", help="train:dev:test proportions by English sentence.")] = TOPIC_SPLIT,
    train_per_label: Annotated[
        int, typer.Option("--train-per-label", help="Training sentences per label (per supervised language).")
    ] = DEFAULT_TRAIN_PER_LABEL,
    root: Annotated[Optional[Path], typer.Option("--root", help="Locale folder (default /usr/share/locale).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (a hash of each English sentence).")] = 0,
    align_pairs: Annotated[
        Optional[str],
        typer.Option(
            "--align-pairs",
            help="Also write align-train.jsonl: the TRAIN sentences in English <-> these languages (in-domain "
            "alignment pairs, no labels, no dev/test text), e.g. ru,zh_CN,ja.",
        ),
    ] = None,
    overwrite: OverwriteFilesOption = False,
    debug: DebugOption = False,
) -> None:
    """A cross-lingual classification task from the gettext catalogs: a UI sentence in language X -> the kind of
    program it comes from (packages, database, files, security, desktop, system); dev and test are the same
    sentences in every language, balanced by label."""

    def action() -> None:
        task = build_topic_task(
            parse_langs(supervised, "--supervised"),
            list(comma_list(transfer)),
            out,
            split=split,
            seed=seed,
            train_per_label=train_per_label,
            locale_root=root or DEFAULT_ROOT,
            overwrite=overwrite,
            align_langs=list(comma_list(align_pairs)) if align_pairs else None,
        )
        print_topic_task(task, console)

    run_safely(debug, action)
