"""The `loramerge` command line: typer glue only. One module per command group (`app` holds merge and
demo, `train`, `data`, `eval`, `probe`, `hub`), and `support` with the one error policy every command uses.

May import: everything below it. Nothing in the library imports from here.
"""

from loramerge.cli.app import app, main

__all__ = ["app", "main"]
