"""The `loramerge` command line: the app that gathers every command group, and `demo`.

Command modules import the library inside their commands, so `loramerge --help` loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loramerge.cli.data import data_app
from loramerge.cli.eval import eval_command
from loramerge.cli.hub import push
from loramerge.cli.merge import export, merge
from loramerge.cli.models import models
from loramerge.cli.options import DebugOption, OverwriteOption
from loramerge.cli.probe import probe
from loramerge.cli.support import console, quiet_libraries, run_safely
from loramerge.cli.train import train_align, train_task

app = typer.Typer(
    name="loramerge",
    help="Cross-lingual LoRA adapters: align middle layers, train tasks, merge adapters exactly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("merge")(merge)
app.command("export")(export)
app.command("train-align")(train_align)
app.command("train-task")(train_task)
app.command("models")(models)
app.command("probe")(probe)
app.command("push")(push)
app.command(name="eval")(eval_command)
app.add_typer(data_app, name="data")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's outputs.")] = Path("loramerge-demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="The same pipeline on bundled:smollm2-135m with a few steps and items (~1 min, CI).")
    ] = False,
    overwrite: OverwriteOption = True,
    debug: DebugOption = False,
) -> None:
    """The method end to end on bundled:gemma-3-270m, offline, on the topic task: train-align, joint and task-only
    train-task, exact merge, per-language evaluation and retrieval probe, report.md (~18-25 min on 2 CPU cores)."""
    from loramerge.demo.run import run_demo

    run_safely(debug, lambda: run_demo(out, quick=quick, overwrite=overwrite, console=console))


def main() -> None:
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
