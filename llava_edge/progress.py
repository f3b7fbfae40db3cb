"""The progress callbacks that long jobs (init, data, export, evaluation, benchmarks) take.

The library calls them and draws nothing; the CLI turns them into a bar on a terminal
(:func:`llava_edge.cli.common.progress_bar`). Training shows its own progress
(:class:`llava_edge.trainer.progress.TrainProgress`: loss, learning rate and speed on the
bar, log lines when not on a terminal), so it does not go through these.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total)``, in the job's own unit (bytes, tensors, images, runs).
Progress = Callable[[int, int], None]
#: ``progress(stage, done, total)``: a job of named stages (export's steps and files).
StageProgress = Callable[[str, int, int], None]
