"""Training metrics: one JSON line per optimizer step, and a loss-curve PNG.

``metrics.jsonl`` records, per step: ``step``, ``epoch`` (fractional), ``loss`` (mean over
the step's label tokens, all processes), ``lr`` (the LLM's, or the first group's),
``grad_norm`` (before clipping), ``samples``, ``tokens`` (label tokens), ``skipped``
(bad samples skipped so far), ``samples_per_s`` and ``elapsed_s``. A resumed run first
drops the lines after its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from llava_edge.atomic_dir import atomic_path


@dataclass
class StepRecord:
    step: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float
    samples: int
    tokens: int
    skipped: int
    samples_per_s: float
    elapsed_s: float


class MetricsLog:
    """Append-only JSONL of :class:`StepRecord`, flushed after every line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only the records up to ``step`` (for a resumed run)."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        self.path.write_text("")

    def append(self, record: StepRecord) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(record)) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(records: list[dict], out: str | Path, title: str = "training loss") -> None:
    """Write the loss (and a smoothed line) and learning rate against step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = [r for r in records if math.isfinite(r["loss"])]
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:
        window = max(2, len(losses) // 20)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over label tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if records:
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in records], color="gray", lw=0.8, ls="--")
        lr_ax.set_ylabel("learning rate", color="gray")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(out, suffix=".tmp.png") as tmp:  # savefig goes by the name's ending
        fig.savefig(tmp)
    plt.close(fig)
