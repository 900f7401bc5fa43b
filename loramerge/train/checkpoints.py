"""Resumable training checkpoints: trainable tensors, optimizer, scheduler, data positions, RNG.

Only the trainable (LoRA) tensors are stored, not the frozen base model: a checkpoint of an 8B model
with r=8 adapters is ~80 MB instead of 16 GB. Each process stores its own RNG state so dropout
continues identically after a resume.

Under data parallelism (DDP) every process holds the whole optimizer state, so the main process saves it
in `optimizer.pt`. Under FSDP each process holds only its shard: every process writes its shard into
`optimizer-shards/` with torch.distributed.checkpoint (one `__<rank>_0.distcp` file each, plus `.metadata`);
--resume reads them with the same launch configuration. The LoRA tensors are gathered in full into
`trainable.safetensors` in both cases, so the file means the same thing whatever wrote it.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from loramerge.atomic import recover_interrupted_replace, replace_directory
from loramerge.errors import LoramergeError
from loramerge.faults import crash_point

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"  # DDP and one process: optimizer and scheduler; FSDP: the scheduler only
SHARDED_OPTIMIZER_DIR = "optimizer-shards"  # FSDP: every process's optimizer shard (torch.distributed.checkpoint)
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


def gathered_trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full trainable tensors of a sharded (FSDP) model, on the main process; an empty dict elsewhere.

    Every process must call it (the shards are gathered). Frozen parameters are left out, so the base model is
    never gathered: only the LoRA factors travel. Names are those of the unsharded model.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return {name: tensor.contiguous() for name, tensor in get_model_state_dict(model, options=options).items()}


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # accelerate wraps the optimizer; torch.distributed.checkpoint wants the one that owns the parameters
    return getattr(optimizer, "optimizer", optimizer)


def latest_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


Parts = tuple[dict[str, torch.Tensor], dict[str, Any]]  # the trainable tensors, what optimizer.pt holds


def whole_parts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Parts:
    return trainable_tensors(model), {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def sharded_parts(staging: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> Parts:
    """FSDP, on every process: gather the LoRA tensors (to the main process) and write this process's optimizer shard."""
    tensors = gathered_trainable_tensors(model)
    dcp.save(get_optimizer_state_dict(model, inner_optimizer(optimizer)), checkpoint_id=staging / SHARDED_OPTIMIZER_DIR)
    return tensors, {"scheduler": scheduler.state_dict()}


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
    sharded: bool = False,
) -> Path:
    """Write checkpoint-<step>'s files into its staging folder; publish_checkpoint makes it visible.

    sharded (FSDP): `model` is the prepared (sharded) model and every process must call this, since the
    LoRA tensors are gathered and each process writes its optimizer shard.
    """
    target = folder / f"checkpoint-{step}"
    staging = folder / f".checkpoint-{step}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    torch.save(rng, staging / f"rng-{process_index}.pt")
    parts = sharded_parts(staging, model, optimizer, scheduler) if sharded else None  # every process takes part
    if is_main:
        tensors, states = parts or whole_parts(model, optimizer, scheduler)
        save_file(tensors, str(staging / PARAMS_FILE))
        torch.save(states, staging / OPTIMIZER_FILE)
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


def load_sharded(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """FSDP: every process loads the full LoRA tensors (each keeps its shard) and reads its optimizer shard."""
    if not (checkpoint / SHARDED_OPTIMIZER_DIR).is_dir():
        raise LoramergeError(
            f"{checkpoint} was written without FSDP (its optimizer state is one file, not shards): resume it with the launch "
            "configuration that started it"
        )
    tensors = load_file(str(checkpoint / PARAMS_FILE))
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
    optimizer = inner_optimizer(optimizer)
    # The layout to read into: this process's shard of each state (a fresh optimizer's is made by a zero-lr step).
    # dcp.load reads into each state the part this process holds, located by its offsets in the shards' metadata.
    shards = get_optimizer_state_dict(model, optimizer)
    dcp.load(shards, checkpoint_id=checkpoint / SHARDED_OPTIMIZER_DIR)
    # FSDP2's states may be filled in place by now, but step counts, param_groups and other wrappers need this
    set_optimizer_state_dict(model, optimizer, shards)


def load_whole(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, states: dict[str, Any]) -> None:
    if "optimizer" not in states:
        raise LoramergeError(
            f"{checkpoint} was written under FSDP (its optimizer state is sharded): resume it with an FSDP launch configuration"
        )
    tensors = load_file(str(checkpoint / PARAMS_FILE))
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor.to(parameters[name].device))
    optimizer.load_state_dict(states["optimizer"])


def read_checkpoint(
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    process_index: int,
    sharded: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint into the model, optimizer and scheduler; return the trainer state.

    sharded (FSDP): `model` is the prepared (sharded) model and every process must call this.
    """
    states = torch.load(checkpoint / OPTIMIZER_FILE, weights_only=False)
    if sharded:
        load_sharded(checkpoint, model, optimizer)
    else:
        load_whole(checkpoint, model, optimizer, states)
    scheduler.load_state_dict(states["scheduler"])
    rng_file = checkpoint / f"rng-{process_index}.pt"
    if rng_file.exists():
        restore_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
