"""Returning memory to the OS: mapped weight pages dropped, and training with a compact vocabulary unchanged."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loramerge.recipes import load_recipe
from loramerge.train import run
from loramerge.train.memory import compact_frozen_vocabulary, drop_file_pages
from loramerge.train.recipe import TrainRecipe
from tests.helpers import adapter_tensors
from tests.models.test_int8_groups import q8_0_matrix

MB = 2**20


def resident_file_mb() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("RssFile")) // 1024


def test_dropping_a_mapped_tensor_returns_its_pages_and_keeps_its_values(tmp_path):
    path = tmp_path / "weights.bin"
    expected = torch.arange(64 * MB // 4, dtype=torch.float32)
    expected.numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=expected.numel(), dtype=torch.float32)  # a private mapping
    assert torch.equal(mapped, expected)  # every page touched, now resident
    before = resident_file_mb()
    dropped = drop_file_pages(mapped)
    assert dropped >= 63 * MB
    assert resident_file_mb() <= before - 60
    assert torch.equal(mapped, expected)  # read again: faulted back in from the file, the same values


def test_memory_that_is_not_a_mapped_file_is_never_dropped():
    anonymous = torch.arange(16 * MB // 4, dtype=torch.float32)
    assert drop_file_pages(anonymous) == 0
    assert torch.equal(anonymous, torch.arange(16 * MB // 4, dtype=torch.float32))


def q8_0_gemma(tiny_model_dir, folder: Path) -> Path:
    """The tiny Gemma 3 (embeddings scaled, head tied) with an embedding of Q8_0 values: compacted when trained."""
    folder.mkdir()
    for item in tiny_model_dir("gemma3").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    weights = load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"] = q8_0_matrix(*weights["model.embed_tokens.weight"].shape, seed=5)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def joint_recipe(model_dir: Path, example_data: dict[str, Path], **changes: object) -> TrainRecipe:
    flags = {"model": str(model_dir), "data": str(example_data["task"]), "pairs": str(example_data["pairs"]), "max_steps": 4}
    return load_recipe(TrainRecipe, Path("recipes/tiny/tiny-joint.yaml"), flags={**flags, **changes})


@pytest.mark.parametrize("checkpointing", [False, True])  # checkpointing hooks the (replaced) input embedding
def test_training_with_a_compact_vocabulary_gives_the_same_losses_and_adapter(
    tiny_model_dir, example_data, tmp_path, monkeypatch, checkpointing
):
    """Both runs must agree to the bit."""
    dropped: list[int] = []
    monkeypatch.setattr(run, "compact_frozen_vocabulary", lambda model: dropped.append(compact_frozen_vocabulary(model)))
    model_dir = q8_0_gemma(tiny_model_dir, tmp_path / "model")
    results = {
        compact: run.train_adapter(
            joint_recipe(model_dir, example_data, compact_vocabulary=compact, gradient_checkpointing=checkpointing),
            "task",
            tmp_path / f"compact-{compact}",
        )
        for compact in (True, False)
    }
    assert len(dropped) == 1 and dropped[0] > 0  # the compact run did swap the vocabulary and drop its mapped pages
    assert results[True].metrics == results[False].metrics
    first, second = adapter_tensors(results[True].out), adapter_tensors(results[False].out)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_a_run_with_a_compact_vocabulary_resumes_to_the_uninterrupted_result(tiny_model_dir, example_data, tmp_path):
    model_dir = q8_0_gemma(tiny_model_dir, tmp_path / "model")
    straight = run.train_adapter(joint_recipe(model_dir, example_data), "task", tmp_path / "straight")

    def press_ctrl_c(state) -> None:
        if state.step == 2:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "resumed"
    assert run.train_adapter(joint_recipe(model_dir, example_data), "task", out, on_step=press_ctrl_c).out is None
    resumed = run.train_adapter(joint_recipe(model_dir, example_data), "task", out, resume=True)
    assert resumed.state.step == 4
    expected, actual = adapter_tensors(straight.out), adapter_tensors(out)
    assert expected.keys() == actual.keys() and all(torch.equal(actual[key], expected[key]) for key in expected)
