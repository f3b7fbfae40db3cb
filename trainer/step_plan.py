"""Which samples each process sees at each optimizer step.

The order is a seeded permutation per epoch, cut into global batches; a global batch is
split evenly over the processes and then into micro-batches. Everything follows from
(seed, epoch, step), so

* a resumed run picks up at the exact sample where it stopped (no data-loader state);
* 1 process and N processes see the same global batches, so with the loss normalised by
  the global number of label tokens their gradients are the same.

Every process runs the same number of micro-batches per step (needed for the collective
gradient sync). A final, partial global batch keeps a multiple of the process count
(at most ``processes - 1`` samples per epoch are left out, none on one process) and is
split into as many, smaller, micro-batches as a full one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

from llava_edge.errors import LlavaEdgeError


@dataclass(frozen=True)
class StepPlan:
    n_samples: int
    global_batch_size: int
    micro_batch_size: int
    num_processes: int = 1
    process_index: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        per_step = self.num_processes * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise LlavaEdgeError(
                f"global batch {self.global_batch_size} is not a multiple of micro batch "
                f"{self.micro_batch_size} x {self.num_processes} process(es); choose a "
                "micro batch that divides global batch / processes")
        if self.n_samples < self.num_processes:
            raise LlavaEdgeError(f"{self.n_samples} sample(s) cannot feed "
                                 f"{self.num_processes} processes")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_samples / self.global_batch_size)

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per process in a full step."""
        return self.global_batch_size // (self.num_processes * self.micro_batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """The sample order of ``epoch``: a permutation seeded by (seed, epoch)."""
        return _permutation(self.n_samples, self.seed, epoch)

    def _share(self, step: int) -> int:
        """Samples each process gets at ``step``."""
        k = step % self.steps_per_epoch
        size = min(self.global_batch_size, self.n_samples - k * self.global_batch_size)
        return size // self.num_processes

    def micro_count(self, step: int) -> int:
        """Micro-batches each process runs at ``step``: the same on every process, and the
        same at every step (smaller ones in a partial step) unless a partial step has fewer
        samples per process than that."""
        return min(self.accumulation_steps, self._share(step))

    def micro_batches(self, step: int) -> list[list[int]]:
        """This process's micro-batches (sample indices) for global step ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch_size
        share = self._share(step)
        batch = self.epoch_order(epoch)[start:start + share * self.num_processes]
        mine = batch[self.process_index * share:(self.process_index + 1) * share]
        n_micro = self.micro_count(step)
        # Split as evenly as possible, so that no micro-batch of the step is empty.
        bounds = [round(j * share / n_micro) for j in range(n_micro + 1)]
        return [mine[bounds[j]:bounds[j + 1]] for j in range(n_micro)]

    def iter_micro_batches(self, first_step: int, total_steps: int) -> Iterator[list[int]]:
        """Every micro-batch from ``first_step`` to the end, in order (a batch sampler)."""
        for step in range(first_step, total_steps):
            yield from self.micro_batches(step)


class PlanSampler:
    """A ``batch_sampler`` for ``torch.utils.data.DataLoader`` following a :class:`StepPlan`."""

    def __init__(self, plan: StepPlan, first_step: int, total_steps: int):
        self.plan, self.first_step, self.total_steps = plan, first_step, total_steps

    def __iter__(self) -> Iterator[list[int]]:
        return self.plan.iter_micro_batches(self.first_step, self.total_steps)

    def __len__(self) -> int:
        return sum(self.plan.micro_count(s) for s in range(self.first_step, self.total_steps))


@lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()
