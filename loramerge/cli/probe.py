"""`loramerge probe`: per-layer cross-lingual retrieval of a model and its adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loramerge.cli.options import DebugOption, OverwriteOption
from loramerge.cli.support import console, run_safely


def probe(
    model: Annotated[str, typer.Option("--model", help="Local model folder, org/name[@revision] or bundled:NAME.")],
    pairs: Annotated[
        Path, typer.Option("--pairs", help="Parallel sentences (JSONL or TSV); multiway data gives X->Y directions too.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for probe.json and probe.png.")],
    adapter: Annotated[
        Optional[list[str]],
        typer.Option("--adapter", help="PEFT adapter to compare with the base: PATH or NAME=PATH (repeatable)."),
    ] = None,
    langs: Annotated[
        Optional[str], typer.Option("--langs", help="Comma-separated target languages (default: all in the file).")
    ] = None,
    layers: Annotated[str, typer.Option("--layers", help="'all' or comma-separated hidden_states indices.")] = "all",
    skip_first_token: Annotated[
        bool,
        typer.Option(
            "--skip-first-token/--keep-first-token",
            help="Pooling: leave out the first (BOS) token, as the alignment loss does by default.",
        ),
    ] = True,
    max_sentences: Annotated[int, typer.Option("--max-sentences", help="Sentence groups to use, in file order.")] = 300,
    overwrite: OverwriteOption = False,
    debug: DebugOption = False,
) -> None:
    """Top-1 retrieval accuracy of translations per layer, by cosine and ratio margin (Artetxe & Schwenk 2019)."""
    from loramerge.evaluate.probe_run import ProbeSettings, run_probe

    settings = ProbeSettings(
        model=model,
        pairs=pairs,
        out=out,
        adapters=tuple(adapter or ()),
        languages=tuple(part.strip() for part in langs.split(",")) if langs else None,
        layers=layers,
        skip_first_token=skip_first_token,
        max_sentences=max_sentences,
        overwrite=overwrite,
    )
    run_safely(debug, lambda: run_probe(settings, console))
    console.print(f"probe written to {out}")
