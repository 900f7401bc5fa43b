"""`loramerge push`, and the `--push-to` step that merge, train-align and train-task run after writing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from loramerge.cli.options import DebugOption
from loramerge.cli.support import console, run_safely
from loramerge.errors import LoramergeError
from loramerge.hub.client import check_repo_id, push_folder

PushToOption = Annotated[
    Optional[str],
    typer.Option(
        "--push-to",
        help="After writing, upload the adapter to this Hub repo (namespace/name) in one commit; "
        "the token comes from HF_TOKEN or `hf auth login`.",
    ),
]


def check_push_target(repo_id: str | None) -> None:
    """Refuse a bad --push-to before any work, not after a long merge or training run."""
    if repo_id is not None:
        check_repo_id(repo_id, "--push-to")


def push_output(out: Path, repo_id: str) -> None:
    """Push a command's finished output; a failure leaves it as written and says how to retry."""
    try:
        url = push_folder(out, repo_id)
    except LoramergeError as exc:
        raise LoramergeError(f"{exc.one_line()}; {out} is complete: retry with `loramerge push {out} {repo_id}`") from exc
    report_push(out, repo_id, url)


def report_push(folder: Path, repo_id: str, url: str) -> None:
    console.print(f"pushed {folder} to {repo_id}")
    print(url)  # stdout holds only the commit URL, for scripts


def push(
    folder: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter folder (e.g. the --out of merge or train-*).")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo to upload to: namespace/name (created if missing).")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing repo keeps its setting).")
    ] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to commit to (created if missing).")] = None,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", help="Commit message.")] = None,
    debug: DebugOption = False,
) -> None:
    """Upload an adapter folder to the Hugging Face Hub in one commit and print the commit URL."""

    def action() -> None:
        url = push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message)
        report_push(folder, repo_id, url)

    run_safely(debug, action)
