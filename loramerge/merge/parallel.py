"""Module merges on a few single-threaded workers, results in the input order, a bounded number in flight.

Factor methods work per module on out x R matrices (R ~ 32-64): one module is too small for torch's own
threads (OpenMP workers spin waiting for a busy core: 29-95 s instead of 1.5 s for an 8B-shaped svd on a shared
2-core machine), but the 224 modules of an 8B adapter are independent. Each worker runs torch with one thread,
so a busy core only slows its worker down, the way a busy core slows a one-thread merge. Tensors are read in
the caller's thread (safetensors handles stay there); the workers only compute.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")

# With 2 workers on 2 cores (svd, 4 r=16 adapters, Llama-3-8B shapes) the caller's thread is already the longer
# path: of 1.83 s, writing the 671 MB output 0.49 s, fsync 0.28 s, reading 0.15 s, checks 0.16 s, and 0.44 s
# waiting for workers (bench/probes.py merge-profile svd 4). More workers were not measured (2-core machines):
# the cap keeps a many-core machine from holding dozens of modules in flight for a writer that cannot take them.
MAX_WORKERS = 4


def worker_count() -> int:
    """The CPUs this process may run on, at most MAX_WORKERS; at least 1."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, available))


def _one_torch_thread() -> None:
    # torch.set_num_threads is per thread under OpenMP (its ICV): a new thread would start with every core.
    torch.set_num_threads(1)


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """function(item) for each item, in order; at most 2 x workers computed ahead of the consumer, so memory
    holds a few modules, not the whole adapter. workers <= 1 runs in the caller's thread."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=workers, initializer=_one_torch_thread) as pool:
        pending: deque[Future[Result]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped (an error downstream): drop what has not started
                future.cancel()
