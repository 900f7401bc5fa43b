"""The one training loop: both train commands run it; objectives differ, the loop does not.

A cycle such as ["task", "align"] says which objective each micro-batch uses (the paper alternates
task and alignment batches rather than weighting a summed loss). Gradients of `grad_accum`
micro-batches are summed, then one optimizer step. Ctrl-C is caught as a flag and honoured at the
next step boundary, where parameters, optimizer and data positions agree, so the checkpoint it
writes resumes exactly.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from loramerge.faults import crash_point
from loramerge.train.batches import BatchStream
from loramerge.train.checkpoints import publish_checkpoint, rng_state, write_checkpoint
from loramerge.train.log import MetricsLog, ProgressDisplay


@dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    grad_accum: int
    cycle: list[str]
    max_grad_norm: float | None
    log_every: int
    eval_every: int | None
    save_every: int | None
    checkpoint_dir: Path


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done; picks the objective from the cycle
    tokens: int = 0
    micro_batches: dict[str, int] = field(default_factory=dict)  # per objective, this process
    interrupted: bool = False
    last_losses: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "micro": self.micro, "tokens": self.tokens, "micro_batches": dict(self.micro_batches)}


class StopRequest:
    """The first Ctrl-C asks for a clean stop at the next step boundary; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


Evaluate = Callable[[], dict[str, float]]
StepCallback = Callable[[LoopState], None]


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum().item())


def is_sharded(accelerator: Accelerator) -> bool:
    """FSDP: parameters and optimizer state are split across processes (checkpoints gather or shard them)."""
    return accelerator.distributed_type == DistributedType.FSDP


def save_checkpoint(
    accelerator: Accelerator,
    settings: LoopSettings,
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    streams: dict[str, BatchStream],
) -> None:
    """Called only at step boundaries, where parameters, optimizer and data positions agree."""
    sharded = is_sharded(accelerator)
    write_checkpoint(
        settings.checkpoint_dir,
        state.step,
        model if sharded else accelerator.unwrap_model(model),  # FSDP gathers through the sharded model
        optimizer,
        scheduler,
        {"loop": state.state_dict(), "streams": {name: stream.state_dict() for name, stream in streams.items()}},
        accelerator.is_main_process,
        accelerator.process_index,
        rng_state(),
        sharded=sharded,
    )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_checkpoint(settings.checkpoint_dir, state.step)
    accelerator.wait_for_everyone()


def stop_agreed(accelerator: Accelerator, requested: bool) -> bool:
    """Under data parallelism every process must stop at the same step, or the next collective hangs."""
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


# A LoRA gradient norm below this is no update at all: trained adapters start at ~1e-3 to 1 (bundled models,
# lr 5e-4 to 1e-3); align.temperature=1e30 gives ~1e-31.
NO_GRADIENT = 1e-12


def warn_if_no_gradient(parameters: list[torch.nn.Parameter], losses: dict[str, list[float]], accelerator: Accelerator) -> None:
    """Settings that make the objective constant (a temperature so large that every pair scores alike) leave every
    LoRA gradient at zero: the run would write an adapter that does nothing. Said at the first step, from the
    gradient actually observed."""
    grads = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    norm = float(torch.stack(grads).norm()) if grads else 0.0
    norm = float(accelerator.reduce(torch.tensor([norm], device=accelerator.device), reduction="sum").item())
    if norm <= NO_GRADIENT and accelerator.is_main_process:
        seen = ", ".join(f"{kind} loss {values[-1]:.4f}" for kind, values in losses.items())
        print(
            f"warning: the first step's gradient is zero (norm {norm:.1e}; {seen}): the objective does not depend on "
            "the adapter, so training will not change it. Check the recipe: align.temperature, the layer, the data",
            file=sys.stderr,
        )


def run_loop(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    streams: dict[str, BatchStream],
    settings: LoopSettings,
    state: LoopState,
    log: MetricsLog,
    evaluate: Evaluate | None = None,
    on_step: StepCallback | None = None,
) -> LoopState:
    parameters = [p for p in model.parameters() if p.requires_grad]
    first_step = state.step  # 0, or where a resumed run restarts
    display = ProgressDisplay(settings.total_steps, state.step, enabled=accelerator.is_main_process)
    sums: dict[str, list[float]] = {}
    if evaluate is not None and settings.eval_every and state.step == 0:
        log.write({"step": 0, **evaluate()})  # the starting point: did training raise or lower the held-out scores?
    window_tokens, window_start = 0, time.perf_counter()
    model.train()
    with StopRequest().installed() as stop, display:
        while state.step < settings.total_steps and not stop_agreed(accelerator, stop.requested):
            for micro in range(settings.grad_accum):
                kind = settings.cycle[state.micro % len(settings.cycle)]
                batch = {k: v.to(accelerator.device) for k, v in streams[kind].next_batch().items()}
                last = micro == settings.grad_accum - 1
                with nullcontext() if last else accelerator.no_sync(model):
                    loss = model(kind, **batch)
                    accelerator.backward(loss / settings.grad_accum)
                sums.setdefault(kind, []).append(loss.detach().float().item())
                tokens = batch_tokens(batch)
                window_tokens += tokens
                state.tokens += tokens
                state.micro += 1
                state.micro_batches[kind] = state.micro_batches.get(kind, 0) + 1
            if state.step == first_step:
                warn_if_no_gradient(parameters, sums, accelerator)
            if settings.max_grad_norm is not None:
                accelerator.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.step % settings.log_every == 0 or state.step == settings.total_steps:
                elapsed = time.perf_counter() - window_start
                # tokens processed by all processes: each process counts its own micro-batches
                rate = window_tokens * accelerator.num_processes / max(elapsed, 1e-9)
                window = {f"{kind}_loss": sum(v) / len(v) for kind, v in sums.items()}
                state.last_losses.update(window)  # an objective absent from this window keeps its last value
                record = {
                    "step": state.step,
                    **window,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_second": rate,
                    **{f"{n}_epochs": round(s.epochs_done, 4) for n, s in streams.items()},
                }
                log.write(record)
                display.update(state.step, record)
                sums, window_tokens, window_start = {}, 0, time.perf_counter()
            if evaluate is not None and settings.eval_every and state.step % settings.eval_every == 0:
                log.write({"step": state.step, **evaluate()})
                model.train()
            if settings.save_every and state.step % settings.save_every == 0:
                save_checkpoint(accelerator, settings, state, model, optimizer, scheduler, streams)
            display.update(state.step)
            crash_point("train:step")
            if on_step is not None:
                on_step(state)
        if state.step < settings.total_steps:  # left the loop early: a stop was requested
            state.interrupted = True
            save_checkpoint(accelerator, settings, state, model, optimizer, scheduler, streams)
    return state
