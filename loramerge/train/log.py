"""Training telemetry: metrics as JSONL (and TensorBoard when installed), a rich progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to `step` (a resumed run's checkpoint): the steps after it are trained, and logged, again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # the half-written last line of a killed run
            continue
        if row.get("step", 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


class MetricsLog:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tensorboard_dir))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def describe(record: dict[str, Any]) -> str:
    parts = [f"{key.removesuffix('_loss')} {value:.4f}" for key, value in record.items() if key.endswith("_loss")]
    if "tokens_per_second" in record:
        parts.append(f"{record['tokens_per_second']:.0f} tok/s")
    return "  ".join(parts)


class ProgressDisplay:
    """Steps, losses by objective and tokens/s on stderr (main process only)."""

    def __init__(self, total_steps: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.progress.add_task("", total=total_steps, completed=done)

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if record is not None:
            self.progress.update(self.task, completed=step, description=describe(record))
        else:
            self.progress.update(self.task, completed=step)
