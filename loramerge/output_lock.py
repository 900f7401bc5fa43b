"""One run at a time per output: a lock beside `--out` that names its holder, and the repair of leftovers.

Two trainings into one folder used to interleave their metrics and crash on each other's checkpoint staging;
telling the second one to pass --overwrite would have wrecked the first. The lock is filelock's (an OS lock:
the kernel drops it when the holder dies, even by SIGKILL), one per absolute --out path, kept in a folder of
the system's temp dir so that nothing is written beside --out before the run has checked its inputs; the
holder's pid, host, command and start time are in an owner file beside the lock, so the second run can say
who holds it. An owner file without a held lock was left by a process that died: the next run takes over and
says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from loramerge.atomic import recover_interrupted_replace
from loramerge.errors import LoramergeError
from loramerge.faults import crash_point

_held: dict[Path, int] = {}  # outputs this process holds, with nesting depth (the demo and merge --search nest)


def lock_paths(out: Path) -> tuple[Path, Path]:
    folder = Path(tempfile.gettempdir()) / f"loramerge-locks-{getattr(os, 'getuid', lambda: 0)()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]
    return folder / f"{key}.lock", folder / f"{key}.owner.json"


def notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def describe(owner: dict[str, object]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))  # type: ignore[arg-type]
    return f"pid {owner.get('pid')} on {owner.get('host')} (`{owner.get('command')}`, since {started})"


def read_owner(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_launch_main() -> bool:
    """False in the other processes of a torchrun / accelerate launch: the run's rank 0 owns its outputs."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out` (and the `.run` folder beside it) for this process; repair what an interrupted run left."""
    key = out.absolute()
    if key in _held or not is_launch_main():
        _held.setdefault(key, 0)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    lock_file, owner_file = lock_paths(out)
    lock = FileLock(str(lock_file), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = read_owner(owner_file)
        holder = describe(owner) if owner else "another process"
        raise LoramergeError(
            f"--out {out}: in use by another loramerge run, {holder}; wait for it to end or stop it, or choose another --out"
        ) from None
    try:
        if (stale := read_owner(owner_file)) is not None:
            notice(f"took over {out} from {describe(stale)}, which ended without releasing it")
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["loramerge", *sys.argv[1:]]),
            "started": time.time(),
        }
        owner_file.write_text(json.dumps(owner) + "\n", encoding="utf-8")
        crash_point("output:locked")
        for note in recover_interrupted_replace(out):
            notice(note)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            owner_file.unlink(missing_ok=True)
    finally:
        lock.release()
