"""Handing memory back to the operating system once a run no longer needs it.

The tokenizer of a 262k-token vocabulary (Gemma-3) holds ~320 MB of anonymous memory, needed only to build the
batches; freed, glibc keeps ~135 MB of it in its arenas until malloc_trim returns it (bench/probes.py
tokenizer-memory: RssAnon 579 -> 404 MB by `del`, -> 268 MB after malloc_trim). Training's peak comes later, so what is returned here is peak
memory saved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_to_os() -> None:
    """Collect unreachable Python objects, then return the allocator's free pages to the operating system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
