"""Outputs appear complete or not at all: build in a staging folder beside the target, then rename.

A replace is two renames (`out` -> `.out.previous-X`, then `.out.partial-Y` -> `out`); a kill between them
leaves no `out`. `recover_interrupted_replace` repairs that on the next run: it puts the old output back, or
removes what a finished replace or an unfinished run left behind. Files and folders are fsync'ed before the
rename that publishes them, so a power cut cannot publish a folder whose files are still empty.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loramerge.errors import LoramergeError
from loramerge.faults import crash_point


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
        replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Every file and folder below `folder`, then `folder` itself, on disk."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def replace_directory(staging: Path, out: Path) -> None:
    """Move `staging` to `out`; an existing `out` is set aside first and restored if the move fails."""
    fsync_tree(staging)
    if not out.exists():
        staging.rename(out)
        fsync_path(out.parent)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    backup.rmdir()
    out.rename(backup)
    try:
        crash_point("replace:between-renames")
        staging.rename(out)
    except BaseException:  # Ctrl-C included: put the old output back before anything else
        if not out.exists():
            backup.rename(out)
        raise
    fsync_path(out.parent)
    shutil.rmtree(backup, ignore_errors=True)


def leftovers(out: Path, kind: str) -> list[Path]:
    """`.OUT.partial-*` or `.OUT.previous-*` beside `out`, oldest first."""
    found = [Path(p) for p in glob.glob(str(out.parent / f".{glob.escape(out.name)}.{kind}-*"))]
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime)


def recover_interrupted_replace(out: Path) -> list[str]:
    """Repair what an interrupted run left beside `out`; returns one line per action, for the user.

    Only safe while this process owns `out` (loramerge.output_lock): a live run's staging folder looks the same.
    """
    notes = []
    previous = leftovers(out, "previous")
    if previous and not out.exists():
        newest = previous.pop()  # the output that was in place when the last replace began
        newest.rename(out)
        notes.append(f"restored {out} from {newest.name}, set aside by a replace that was interrupted")
    for folder in previous:
        shutil.rmtree(folder, ignore_errors=True)
        notes.append(f"removed {folder.name}: the old output of a replace that completed")
    for folder in leftovers(out, "partial"):
        shutil.rmtree(folder, ignore_errors=True)
        notes.append(f"removed {folder.name}: the unfinished output of an interrupted run")
    return notes


def write_jsonl_files(files: dict[Path, list[dict[str, str]]], overwrite: bool) -> None:
    """Write every file to a temporary name beside it, then rename each into place: no file is ever half written,
    and nothing is renamed unless all were written."""
    existing = [str(path) for path in files if path.exists()]
    if existing and not overwrite:
        raise LoramergeError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace or choose another --out")
    staged: dict[Path, Path] = {}
    try:
        for path, records in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
            staged[path] = Path(name)
            os.chmod(name, usual_mode(directory=False))  # mkstemp makes 0600; the data file is the user's to share
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
                stream.flush()
                os.fsync(stream.fileno())  # on disk before the rename publishes it
        for path, temporary in staged.items():
            os.replace(temporary, path)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


def publish_once(staging: Path, final: Path, marker: str) -> Path:
    """Rename the finished staging folder into place unless another process published it first: rename() onto
    an existing non-empty folder fails, and then the other's folder (complete when it holds `marker`) stays and
    ours is dropped. For caches shared between processes, where replacing a folder others may read is wrong."""
    fsync_tree(staging)  # e.g. 1.1 GB for Gemma, once: a crash after the rename must not leave empty weight files
    try:
        staging.rename(final)
    except OSError:
        if not (final / marker).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return final
