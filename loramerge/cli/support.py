"""What every command shares: one-line errors with exit code 2, and a console for progress."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

import click
import typer
from rich.console import Console

from loramerge.errors import LoramergeError

USAGE_ERROR = 2  # the exit code of click for bad flags; bad input files get the same
INTERNAL_ERROR = 1
Result = TypeVar("Result")

console = Console(stderr=True)


def quiet_libraries() -> None:
    """Per-file loading bars and a known-harmless deprecation warning (peft 0.21.2 on transformers
    5.23) would bury the tool's own progress; must run before transformers is imported."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers reads this state when it is first imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # PEFT's save looks up the base model's config by name to see whether the vocabulary grew; for bundled:NAME
    # there is nothing to look up (the vocabulary is the GGUF's, never resized by loramerge), so the warning is noise.
    warnings.filterwarnings("ignore", message="Could not find a config file in bundled:", category=UserWarning)


def debug_enabled(flag: bool) -> bool:
    return flag or os.environ.get("LORAMERGE_DEBUG", "") not in ("", "0")


def run_safely(debug: bool, action: Callable[[], Result]) -> Result:
    """Run a command body: user errors become one line on stderr and exit 2; tracebacks only with --debug."""
    try:
        return action()
    except LoramergeError as exc:
        if debug_enabled(debug):
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        raise typer.Exit(USAGE_ERROR) from None
    except (typer.Exit, click.exceptions.Exit):  # a command's own exit code (130 after a saved checkpoint): not an error
        raise
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug_enabled(debug):
            raise
        message = " ".join(str(exc).split())
        print(f"error: internal error {type(exc).__name__}: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        raise typer.Exit(INTERNAL_ERROR) from None
