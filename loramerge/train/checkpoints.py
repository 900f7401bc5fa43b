"""Resumable training checkpoints: trainable tensors, optimizer, scheduler, data positions, RNG.

Only the trainable (LoRA) tensors are stored, not the frozen base model: a checkpoint of an 8B model
with r=8 adapters is ~80 MB instead of 16 GB. Each process stores its own RNG state so dropout
continues identically after a resume.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loramerge.atomic import recover_interrupted_replace, replace_directory
from loramerge.faults import crash_point

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def write_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    is_main: bool,
    process_index: int,
    rng: dict[str, Any],
) -> Path:
    """Write checkpoint-<step> (complete or absent: staged, then renamed) and drop older ones."""
    target = folder / f"checkpoint-{step}"
    staging = folder / f".checkpoint-{step}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    torch.save(rng, staging / f"rng-{process_index}.pt")
    if is_main:
        save_file(trainable_tensors(model), str(staging / PARAMS_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, staging / OPTIMIZER_FILE)
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **trainer_state}, indent=2) + "\n", encoding="utf-8")
    return target


def publish_checkpoint(folder: Path, step: int) -> None:
    """Main process, after every process has written its part: make the checkpoint visible."""
    crash_point("checkpoint:staged")
    replace_directory(folder / f".checkpoint-{step}.partial", folder / f"checkpoint-{step}")
    for old in folder.glob("checkpoint-*"):
        if (match := CHECKPOINT.match(old.name)) and int(match.group(1)) != step:
            shutil.rmtree(old, ignore_errors=True)


def clean_checkpoint_leftovers(folder: Path) -> list[str]:
    """Staging folders of a checkpoint write that a kill interrupted: unfinished ones go, a set-aside one whose
    replacement never arrived comes back. Returns what was done, one line each."""
    notes = []
    for partial in sorted(folder.glob(".checkpoint-*.partial")):
        shutil.rmtree(partial, ignore_errors=True)
        notes.append(f"removed {partial}: a checkpoint whose writing was interrupted")
    for target in {p.name.split(".previous-")[0].lstrip(".") for p in folder.glob(".checkpoint-*.previous-*")}:
        notes += recover_interrupted_replace(folder / target)
    return notes


def read_checkpoint(
    checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, process_index: int
) -> dict[str, Any]:
    """Load a checkpoint into the model, optimizer and scheduler; return the trainer state."""
    tensors = load_file(str(checkpoint / PARAMS_FILE))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor.to(parameters[name].device))
    states = torch.load(checkpoint / OPTIMIZER_FILE, weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    rng_file = checkpoint / f"rng-{process_index}.pt"
    if rng_file.exists():
        restore_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
