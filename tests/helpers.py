"""Test helpers: copies of adapters to damage, and the factors of a merged adapter."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file


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
    return set(load_file(str(adapter / "adapter_model.safetensors")))


def leftovers(parent: Path) -> list[str]:
    """Staging folders a failed write must not leave behind."""
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".previous-" in p.name]
