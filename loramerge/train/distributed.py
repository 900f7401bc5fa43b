"""accelerate plumbing: the Accelerator for a recipe (DDP, or FSDP also on CPU workers), gathering sharded
LoRA tensors for the final save, and a clean end of a torchrun / accelerate-launch worker."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin

from loramerge.errors import LoramergeError
from loramerge.models.precision import resolved_precision
from loramerge.train.checkpoints import gathered_trainable_tensors
from loramerge.train.loop import is_sharded
from loramerge.train.recipe import TrainRecipe


def make_accelerator(recipe: TrainRecipe, joint: bool) -> Accelerator:
    # Joint training leaves the LoRA above layer k without gradient in alignment steps; DDP must be told.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=joint)]
    # accelerate only recognises torchrun/accelerate-launch CPU workers (gloo) when told it runs on CPU.
    cpu = not torch.cuda.is_available()
    precision = resolved_precision(recipe.precision)
    if cpu and precision == "fp16":  # was an internal error in the first forward pass (float != c10::Half), exit 1
        raise LoramergeError("precision fp16 needs a CUDA device and this machine has none; set precision to bf16 or no")
    forget_other_precision(precision)
    accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=handlers, step_scheduler_with_optimizer=False, cpu=cpu)
    if cpu and fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        shard_on_cpu(accelerator)
    return accelerator


def forget_other_precision(precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    mixed_precision; a Python session that trains twice (float32, then bf16) must not fail on that. Only the
    mixed-precision part is forgotten: the process group (PartialState) stays."""
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (distributed_type: FSDP) says so through the environment."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard_on_cpu(accelerator: Accelerator) -> None:
    """Turn a CPU (gloo) launch that asked for FSDP into FSDP, as accelerate does for GPUs.

    accelerate 1.15 switches only GPU-like process groups to FSDP (AcceleratorState leaves MULTI_CPU alone), so
    a CPU launch with an FSDP config would silently train with DDP. FSDP itself (fully_shard, FSDP2) runs on CPU
    with gloo; switching the state here makes accelerate's own FSDP preparation run, the same code as on GPUs.
    """
    state = accelerator.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* environment
    if state.mixed_precision != "no":
        state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what AcceleratorState does on GPUs


def final_adapter_weights(accelerator: Accelerator, objective_model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """FSDP: the gathered LoRA tensors, named as in the PEFT model, for save_pretrained (which would otherwise
    write this process's shards). Every process must call it; None without FSDP (PEFT reads its own model)."""
    if not is_sharded(accelerator):
        return None
    prefix = "model."  # ObjectiveModel holds the PEFT model as .model
    return {name.removeprefix(prefix): tensor for name, tensor in gathered_trainable_tensors(objective_model).items()}


def shutdown_distributed() -> None:
    """End a torchrun/accelerate-launch worker cleanly: without a final barrier, gloo can abort a worker
    (SIGABRT) whose peer has already torn the group down."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()
