"""Outputs appear complete or not at all: build in a staging folder beside the target, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def usual_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask; mkstemp/mkdtemp give 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def output_dir_problem(out: Path, overwrite: bool) -> str | None:
    """Why `out` cannot be written, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is a file; choose a folder path"
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return f"--out {out}: folder exists and is not empty; pass --overwrite to replace it or choose another path"
    return None


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `out` in one rename, on any failure it vanishes.

    The staging folder sits beside `out` so the final rename stays on one file system (atomic).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(usual_mode(directory=True))  # mkdtemp makes 0700; give the output the user's normal mode
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, out)


def replace_directory(staging: Path, out: Path) -> None:
    """Move `staging` to `out`; an existing `out` is set aside first and restored if the move fails."""
    if not out.exists():
        staging.rename(out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    backup.rmdir()
    out.rename(backup)
    try:
        staging.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)
