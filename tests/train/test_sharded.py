"""Sharded training (FSDP2) through `accelerate launch`, two CPU processes with gloo: the same adapter as one
process, and a run killed after a checkpoint resumes from every process's optimizer shard exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from tests.helpers import adapter_tensors, run_with_fault

CONFIG = "recipes/accelerate/fsdp-cpu-2proc.yaml"
STEPS = "6"

# Both tests compare with the same uninterrupted FSDP run: one worker makes it once.
pytestmark = pytest.mark.xdist_group("fsdp")


def train_task(model_dir: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """train-task, joint (task + alignment, --pairs) on the tiny recipe."""
    return [
        *("train-task", "--model", str(model_dir), "--data", str(data["task"]), "--pairs", str(data["pairs"])),
        *("--recipe", "recipes/tiny/tiny-joint.yaml", "--max-steps", STEPS, "--out", str(out), *extra),
    ]


def run(command: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_with_fault(command, fault, OMP_NUM_THREADS="1")


def launch_fsdp(arguments: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG]
    return run([*accelerate, "-m", "loramerge", *arguments], fault)


def assert_same_adapter(actual: Path, expected: Path, atol: float, rtol: float) -> None:
    found, wanted = adapter_tensors(actual), adapter_tensors(expected)
    assert found.keys() == wanted.keys()
    for key in wanted:
        assert torch.allclose(found[key], wanted[key], atol=atol, rtol=rtol), key


@pytest.fixture(scope="module")
def fsdp_run(tiny_model_dir, example_data, tmp_path_factory) -> Path:
    """An uninterrupted FSDP run: 2 processes x 2 examples, a checkpoint at every step."""
    out = tmp_path_factory.mktemp("fsdp") / "straight"
    result = launch_fsdp(train_task(tiny_model_dir("llama"), example_data, out, "--set", "batch_size=2", "--set", "save_every=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("adapter written to") == 1  # only the main process reports
    return out


def test_fsdp_two_processes_match_one_process(fsdp_run, tiny_model_dir, example_data, tmp_path):
    """FSDP's sharded gradients and optimizer steps, the early-exiting alignment steps and the gathered save
    give the adapter of one process with the same global batch (4)."""
    one = run([sys.executable, "-m", "loramerge", *train_task(tiny_model_dir("llama"), example_data, tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_adapter(fsdp_run, tmp_path / "one", atol=1e-5, rtol=1e-4)
    trained = adapter_tensors(fsdp_run)
    assert all(trained[key].abs().max() > 0 for key in trained if "lora_B" in key)  # B starts at zero: it trained


def test_fsdp_run_killed_after_a_checkpoint_resumes_from_every_shard(fsdp_run, tiny_model_dir, example_data, tmp_path):
    out = tmp_path / "resumed"
    arguments = train_task(tiny_model_dir("llama"), example_data, out, "--set", "batch_size=2", "--set", "save_every=1")
    killed = launch_fsdp(arguments, fault="train:step#3:KILL")  # each process kills itself after checkpoint-3
    assert killed.returncode != 0 and not out.exists()
    checkpoint = out.with_name("resumed.run") / "checkpoints" / "checkpoint-3"
    assert_sharded_optimizer_state(checkpoint)

    resumed = launch_fsdp([*arguments, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The kill came after step 3 of 6: Adam's moments and step count must come back from both shards to land here.
    assert_same_adapter(out, fsdp_run, atol=1e-6, rtol=0)


def assert_sharded_optimizer_state(checkpoint: Path) -> None:
    """Each process wrote its own shard, and the shards together cover every LoRA tensor's Adam moments."""
    shards = checkpoint / "optimizer-shards"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert "optimizer" not in torch.load(checkpoint / "optimizer.pt", weights_only=False)  # only the scheduler
    contents = dcp.FileSystemReader(str(shards)).read_metadata().state_dict_metadata
    lora = [name for name in load_file(str(checkpoint / "trainable.safetensors"))]
    assert lora and all(name.startswith("model.base_model.") for name in lora)
    for name in lora:
        moment = contents[f"state.{name}.exp_avg"]
        assert len(moment.chunks) == 2, name  # one chunk per process: sharded, not one copy
        assert sum(chunk.sizes.numel() for chunk in moment.chunks) == moment.size.numel(), name
