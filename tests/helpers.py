"""Test helpers: adapters to damage or compare, their tensors, and commands run with a fault injected."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from loramerge.testing.tiny import ALL_LINEAR, load_model, randomize_trainable


def copy_adapter(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.norm().item()
    return (actual - expected).norm().item() / scale if scale > 0 else (actual - expected).norm().item()


def weighted_sum(deltas: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for delta, weight in zip(deltas, weights):
        for name, tensor in delta.items():
            total[name] = total.get(name, torch.zeros_like(tensor)) + weight * tensor
    return total


def tensor_keys(adapter: Path) -> set[str]:
    return set(adapter_tensors(adapter))


def leftovers(parent: Path) -> list[str]:
    """Staging folders a failed write must not leave behind."""
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".previous-" in p.name]


def save_adapter(model_dir: Path, out: Path, std: float) -> Path:
    """A LoRA adapter on every linear layer: std 0 keeps PEFT's initialisation (B = 0, no change to the
    model); a large std changes the model enough to change greedy outputs."""
    model = get_peft_model(load_model(model_dir), LoraConfig(target_modules=ALL_LINEAR, r=4, lora_alpha=8))
    if std:
        randomize_trainable(model, seed=5, std=std)
    model.save_pretrained(out)
    return out


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def run_with_fault(command: list[str], fault: str | None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command with LORAMERGE_FAULT set to `fault` (loramerge/faults.py), or with none, and `env` added."""
    environment = {key: value for key, value in os.environ.items() if key != "LORAMERGE_FAULT"} | env
    if fault is not None:
        environment["LORAMERGE_FAULT"] = fault
    # Ctrl-C as a user's shell delivers it: a process started with SIGINT ignored keeps ignoring it (CPython installs
    # its KeyboardInterrupt handler only when SIGINT is not ignored), so the child must not inherit the pytest
    # worker's disposition. Seen once in a fresh-clone run under -n 2: an INT fault ignored, the merge finished, exit 0.
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
