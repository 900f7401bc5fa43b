"""The `loramerge` command line: typer glue only. One module per command group (`merge`: merge and export,
`train`, `data`, `models`, `eval`, `probe`, `hub`; `app` gathers them and holds `demo`), `options` with the flags
they share and `support` with the one error policy every command uses. Commands import the library inside their
bodies, so `loramerge --help` loads no torch (tests/cli/test_help.py).

May import: everything below it. Nothing in the library imports from here.
"""

from loramerge.cli.app import app, main

__all__ = ["app", "main"]
