"""Modules merged side by side on worker threads: the same bytes as one at a time, in order, bounded."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from loramerge import merge_adapters
from loramerge.merge import engine
from loramerge.merge.parallel import ordered_map, worker_count


def test_results_come_in_input_order_whatever_finishes_first():
    def slow_for_small(value: int) -> int:
        time.sleep(0.002 * (10 - value))  # the first items finish last
        return value * value

    assert list(ordered_map(slow_for_small, range(10), workers=3)) == [value * value for value in range(10)]


def test_at_most_twice_the_workers_are_computed_ahead_of_the_consumer():
    started: list[int] = []

    def record(value: int) -> int:
        started.append(value)
        return value

    results = ordered_map(record, range(100), workers=2)
    assert next(results) == 0
    time.sleep(0.05)  # let the pool run as far ahead as it may
    assert len(started) <= 2 * 2 + 1
    assert list(results) == list(range(1, 100))


def test_a_worker_error_reaches_the_consumer():
    def fail_on_three(value: int) -> int:
        if value == 3:
            raise ValueError("module 3 failed")
        return value

    with pytest.raises(ValueError, match="module 3 failed"):
        list(ordered_map(fail_on_three, range(8), workers=2))


def test_workers_run_torch_on_one_thread():
    counts = set(ordered_map(lambda _: (torch.get_num_threads(), threading.get_ident()), range(8), workers=2))
    assert {count for count, _ in counts} == {1}
    assert threading.get_ident() not in {ident for _, ident in counts}


def test_worker_count_is_at_least_one():
    assert worker_count() >= 1


@pytest.mark.parametrize("method", ["svd", "core_dare", "iso_cts"])  # core_dare draws random masks per module
def test_parallel_merge_writes_the_bytes_of_a_sequential_one(
    tiny_base, task_adapter, align_adapter, tmp_path, monkeypatch, method
):
    recipe = {
        "sources": [{"path": str(task_adapter), "weight": 0.7}, {"path": str(align_adapter), "weight": 0.5}],
        "method": method,
    }
    monkeypatch.setattr(engine, "worker_count", lambda: 3)
    parallel = merge_adapters(recipe, tmp_path / "parallel")
    monkeypatch.setattr(engine, "worker_count", lambda: 1)
    sequential = merge_adapters(recipe, tmp_path / "sequential")
    first, second = load_file(parallel.out / "adapter_model.safetensors"), load_file(sequential.out / "adapter_model.safetensors")
    assert list(first) == list(second)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert parallel.report["modules"] == sequential.report["modules"]
