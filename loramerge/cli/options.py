"""Flags that several commands share, defined once so their names and help read the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")]
OverwriteFilesOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
