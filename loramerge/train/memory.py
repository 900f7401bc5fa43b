"""Handing memory back to the operating system once a run no longer needs it: the tokenizer once the batches are
built, and the float32 vocabulary matrix once it is held as exact int8 groups.

The tokenizer of a 262k-token vocabulary (Gemma-3) holds ~320 MB of anonymous memory, needed only to build the
batches; freed, glibc keeps ~135 MB of it in its arenas until malloc_trim returns it (bench/probes.py
tokenizer-memory: RssAnon 579 -> 404 MB by `del`, -> 268 MB after malloc_trim). Training's peak comes later, so what is returned here is peak
memory saved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import nn

from loramerge.models.compact_vocabulary import compact_vocabulary


@cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """A function of the C library, or None where the library or the function is missing (malloc_trim: glibc
    only, not macOS, musl or Windows; madvise: POSIX)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library, use_errno=True), name) if library else None
    except (OSError, AttributeError):
        return None


def release_to_os() -> None:
    """Collect unreachable Python objects, then return the allocator's free pages to the operating system."""
    gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


MADV_DONTNEED = 4  # Linux <sys/mman.h>


@cache
def _madvise() -> Callable[[int, int, int], int] | None:
    function = _libc_function("madvise")
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]  # pointer-sized address and length
    return function


def _file_mapping_holds(start: int, stop: int) -> bool:
    """Whether [start, stop) lies inside one mapping of a regular file (a model's weights mapped by safetensors)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(maxsplit=5)
        low, high = (int(value, 16) for value in fields[0].split("-"))
        if low <= start and stop <= high:
            return len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith("/dev/")
    return False


def drop_file_pages(tensor: torch.Tensor) -> int:
    """Take a tensor's pages out of this process's resident memory when it is a view of a mapped file, and return
    how many bytes were dropped (0 for memory of any other kind, which is freed by dropping the tensor instead).

    Weights loaded by safetensors are a private mapping of the file, resident once touched and counted in the
    process's RSS until unmapped; transformers keeps one mapping for the whole file, so dropping one tensor unmaps
    nothing. MADV_DONTNEED on its whole pages returns them: a later read would fault them back in from the file
    with the same values, so a stale reader still sees the right numbers."""
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return 0
    page = mmap.PAGESIZE
    start, stop = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, stop // page * page  # whole pages inside the tensor only
    if last <= first or not _file_mapping_holds(start, stop):
        return 0
    return last - first if madvise(first, last - first, MADV_DONTNEED) == 0 else 0


def compact_frozen_vocabulary(model: nn.Module) -> int:
    """The model's frozen embedding and head as exact int8 groups where they are (models/compact_vocabulary.py),
    the float32 pages they leave behind returned to the OS; the bytes returned. Bundled Gemma-3-270M: 671 MB of
    mapped weights replaced by 189 MB, training's peak 2,255 -> 1,836 MiB at the same speed and the same first
    loss (BENCHMARKS.md, "Issue 25: the vocabulary held as exact int8 groups")."""
    released = compact_vocabulary(model)
    dropped = sum(drop_file_pages(weight) for weight in released)
    released.clear()
    release_to_os()
    return dropped
