"""Deterministic, resumable, process-sharded batches.

Each epoch is a seeded permutation of the data set; a global batch of batch_size * processes indices
is cut from it and process p takes its own slice. The state is two integers, so a checkpoint can
resume exactly where the run stopped, and one process with the global batch sees the same examples
as N processes together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from loramerge.errors import LoramergeError

Example = TypeVar("Example")
Batch = TypeVar("Batch")

EPOCH_SEED_STRIDE = 100_003  # distinct, reproducible permutations per (seed, epoch)


@dataclass
class StreamPosition:
    epoch: int = 0
    batch: int = 0  # global batches already taken in this epoch


class BatchStream(Generic[Example, Batch]):
    def __init__(
        self,
        name: str,
        examples: Sequence[Example],
        batch_size: int,
        collate: Callable[[list[Example]], Batch],
        seed: int,
        num_processes: int = 1,
        process_index: int = 0,
    ) -> None:
        self.name = name
        self.examples = examples
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.position = StreamPosition()
        global_batch = batch_size * num_processes
        # Drop the last partial global batch: contrastive batches need their full set of negatives,
        # and equal batches keep processes in step. The permutation changes every epoch.
        self.batches_per_epoch = len(examples) // global_batch
        if self.batches_per_epoch == 0:
            raise LoramergeError(
                f"{name}: {len(examples)} examples are fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {num_processes}); add data or lower the batch size"
            )
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + self.position.epoch)
            self._order = torch.randperm(len(self.examples), generator=generator).tolist()
        return self._order

    def next_indices(self) -> list[int]:
        if self.position.batch >= self.batches_per_epoch:
            self.position = StreamPosition(epoch=self.position.epoch + 1, batch=0)
            self._order = None
        global_size = self.batch_size * self.num_processes
        start = self.position.batch * global_size + self.process_index * self.batch_size
        self.position.batch += 1
        return self._epoch_order()[start : start + self.batch_size]

    def next_batch(self) -> Batch:
        return self.collate([self.examples[i] for i in self.next_indices()])

    @property
    def epochs_done(self) -> float:
        return self.position.epoch + self.position.batch / self.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "batch": self.position.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = StreamPosition(epoch=int(state["epoch"]), batch=int(state["batch"]))
        self._order = None
