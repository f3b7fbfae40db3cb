"""What a training run shows while it runs: a progress bar with loss, learning rate and
samples/s on a terminal, one log line every few steps elsewhere (CI logs, files)."""

from __future__ import annotations

import sys
from typing import TextIO

from llava_edge.trainer.metrics import StepRecord


class TrainProgress:
    """Context manager; call :meth:`update` after each optimizer step."""

    def __init__(self, total_steps: int, first_step: int = 0, *, enabled: bool = True,
                 logging_steps: int = 10, stream: TextIO | None = None, label: str = "train"):
        self.total = total_steps
        self.first = first_step
        self.enabled = enabled
        self.logging_steps = logging_steps
        self.stream = stream or sys.stderr
        self.label = label
        self._progress = None
        self._task = None

    def __enter__(self) -> TrainProgress:
        if self.enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  "
                           "{task.fields[speed]} samples/s"),
                TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total,
                                                 completed=self.first, loss="-", lr="-",
                                                 speed="-")
        return self

    def update(self, record: StepRecord) -> None:
        if not self.enabled:
            return
        loss, lr, speed = f"{record.loss:.4f}", f"{record.lr:.2e}", f"{record.samples_per_s:.1f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=record.step, loss=loss, lr=lr,
                                  speed=speed)
        elif record.step % self.logging_steps == 0 or record.step == self.total:
            print(f"{self.label} step {record.step}/{self.total}  loss {loss}  lr {lr}  "
                  f"{speed} samples/s", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
