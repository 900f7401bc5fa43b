"""Crash and fault harness: real `loramerge` processes stopped by SIGKILL or SIGINT at named points.

Each kill lands at a known place through `LORAMERGE_FAULT` (loramerge/faults.py: the process signals itself, so
the kernel and the handlers see a real signal). The invariants: the old output intact or the new one complete,
never neither (after the next run has started); `--resume` ends bit-identical to a run that was never stopped;
no staging folder left after the next run; the metrics log holds each step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import adapter_tensors, leftovers, run_with_fault

TINY = str(Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "tiny-{}.yaml")


def loramerge(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_with_fault([sys.executable, "-m", "loramerge", *args], fault)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_tensors(first: Path, second: Path) -> bool:
    a, b = adapter_tensors(first), adapter_tensors(second)
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def overwrite_stopped_between_renames(
    task: Path, align: Path, tmp_path: Path, signal_name: str
) -> tuple[Path, dict, subprocess.CompletedProcess[str]]:
    """Merge task alone into OUT, then merge task + align over it, stopped between the two renames."""
    out = tmp_path / "merged"
    assert loramerge("merge", str(task), "--out", str(out)).returncode == 0
    before = folder_bytes(out)
    fault = f"replace:between-renames:{signal_name}"
    stopped = loramerge("merge", str(task), str(align), "--out", str(out), "--overwrite", fault=fault)
    return out, before, stopped


def test_merge_killed_between_the_two_renames_of_an_overwrite(task_adapter, align_adapter, tmp_path):
    out, before, killed = overwrite_stopped_between_renames(task_adapter, align_adapter, tmp_path, "KILL")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(leftovers(tmp_path)) == 2  # the old output set aside, the new one staged

    # The next command on that --out (here one that is refused: no --overwrite) first puts the old output back.
    refused = loramerge("merge", str(task_adapter), str(align_adapter), "--out", str(out))
    assert refused.returncode == 2 and "not empty" in refused.stderr.splitlines()[-1]
    assert "restored" in refused.stderr and "removed" in refused.stderr
    assert folder_bytes(out) == before and leftovers(tmp_path) == []

    finished = loramerge("merge", str(task_adapter), str(align_adapter), "--out", str(out), "--overwrite")
    assert finished.returncode == 0 and leftovers(tmp_path) == []
    assert folder_bytes(out) != before


def test_merge_interrupted_between_the_two_renames_puts_the_old_output_back_at_once(task_adapter, align_adapter, tmp_path):
    out, before, stopped = overwrite_stopped_between_renames(task_adapter, align_adapter, tmp_path, "INT")
    assert stopped.returncode == 130 and stopped.stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert folder_bytes(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("signal_name", ["KILL", "INT"])
def test_merge_stopped_while_modules_are_in_flight_on_the_workers(task_adapter, align_adapter, tmp_path, signal_name):
    """Stopped after its third module is written, with the next ones computing on the module workers (svd,
    merge/parallel.py): the old output stays whole; a Ctrl-C cleans up at once, a kill at the next run."""
    out = tmp_path / "merged"
    assert loramerge("merge", str(task_adapter), "--out", str(out)).returncode == 0
    before = folder_bytes(out)
    args = ["merge", str(task_adapter), str(align_adapter), "--method", "svd", "--rank", "4", "--out", str(out), "--overwrite"]
    stopped = loramerge(*args, fault=f"merge:module#3:{signal_name}")
    assert folder_bytes(out) == before
    if signal_name == "INT":
        assert stopped.returncode == 130, stopped.stderr
        assert stopped.stderr.strip().splitlines()[-1] == "error: interrupted; no output was written"
        assert leftovers(tmp_path) == []
        return
    assert stopped.returncode == -signal.SIGKILL and len(leftovers(tmp_path)) == 1  # the staged, unfinished output
    again = loramerge(*args)
    assert again.returncode == 0 and "the unfinished output of an interrupted run" in again.stderr
    assert leftovers(tmp_path) == [] and folder_bytes(out) != before


def train_args(model_dir: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Joint training with dropout (so the RNG state must resume too), a checkpoint every 2 of 6 steps."""
    return [
        "train-task",
        "--model", str(model_dir),
        "--data", str(data["task"]),
        "--pairs", str(data["pairs"]),
        "--recipe", TINY.format("joint"),
        "--max-steps", "6",
        "--set", "save_every=2",
        "--set", "log_every=1",
        "--set", "lora.dropout=0.1",
        "--out", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, example_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "adapter"
    result = loramerge(*train_args(tiny_model_dir("llama"), example_data, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def metric_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if not row.get("final") and ("task_loss" in row or "align_loss" in row)]


@pytest.mark.parametrize(
    "fault",
    [
        "train:step#3:INT",  # Ctrl-C after step 3: a checkpoint is saved at once, exit 130
        "train:step#5:KILL",  # killed after step 5: checkpoint-4 survives, step 5 is trained and logged again
        "checkpoint:staged#2:KILL",  # killed with checkpoint-4 staged, not published: resume from checkpoint-2
        "train:final-write:KILL",  # killed while writing the adapter: all steps done, only the write is redone
    ],
)
def test_training_stopped_then_resumed_equals_a_straight_run(fault, straight_run, tiny_model_dir, example_data, tmp_path):
    out = tmp_path / "adapter"
    args = train_args(tiny_model_dir("llama"), example_data, out)
    stopped = loramerge(*args, fault=fault)
    if fault.endswith(":INT"):
        assert stopped.returncode == 130, stopped.stderr[-2000:]
        last = stopped.stderr.strip().splitlines()[-1]
        assert last.startswith("interrupted at step 3: checkpoint saved in") and last.endswith("--resume")
        assert "internal error" not in stopped.stderr
    else:
        assert stopped.returncode == -signal.SIGKILL
    assert not out.exists()

    resumed = loramerge(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same_tensors(out, straight_run)
    assert metric_steps(out) == metric_steps(straight_run) == [1, 2, 3, 4, 5, 6]
    assert leftovers(tmp_path) == [] and not (tmp_path / "adapter.run").exists()


def test_a_second_run_on_the_same_out_is_refused_and_names_the_first(tiny_model_dir, example_data, tmp_path):
    """The first run is held at a known point (SIGSTOP) while the second starts: no timing guesswork."""
    out = tmp_path / "adapter"
    args = train_args(tiny_model_dir("llama"), example_data, out)
    env = {**os.environ, "LORAMERGE_FAULT": "train:step#1:STOP"}
    first = subprocess.Popen([sys.executable, "-m", "loramerge", *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        waited = os.waitpid(first.pid, os.WUNTRACED)  # returns when the first run has stopped itself after step 1
        assert os.WIFSTOPPED(waited[1])
        second = loramerge(*args, "--overwrite")
        assert second.returncode == 2
        line = second.stderr.strip().splitlines()[-1]
        assert f"in use by another loramerge run, pid {first.pid}" in line and "--overwrite" not in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-2000:] if first.stderr else ""
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]  # each step once: nothing of the second run


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(task_adapter, tmp_path):
    out = tmp_path / "merged"
    env = {**os.environ, "LORAMERGE_FAULT": "output:locked:KILL"}  # killed right after taking the lock
    killed = subprocess.Popen([sys.executable, "-m", "loramerge", "merge", str(task_adapter), "--out", str(out)], env=env)
    assert killed.wait(timeout=300) == -signal.SIGKILL
    again = loramerge("merge", str(task_adapter), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"took over {out} from pid {killed.pid} on" in again.stderr
    assert "took over" not in loramerge("merge", str(task_adapter), "--out", str(out), "--overwrite").stderr
