"""The demo, end to end: the `tiny` preset trained from scratch on the synthetic shapes data
with the tiny-demo recipe, stage 1 then stage 2, scored on the held-out multiple-choice set.
"""

from __future__ import annotations

import json
import resource
import time

import pytest

from llava_edge.data.shapes import ShapesConfig, generate_shapes
from llava_edge.trainer.evaluate import TorchAnswerer, evaluate
from llava_edge.trainer.loop import train
from llava_edge.trainer.shapes_mc import write_shapes_mc
from llava_edge.trainer.train_config import resolve_config


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "goal not met yet: the tiny-demo recipe answers the MC eval at chance (23% measured, "
    "756 s wall / 473 s CPU on a loaded 2-core machine); see README, 'The demo recipe'"))
def test_tiny_demo_reaches_90_percent_multiple_choice(tiny_checkpoint, tmp_path):
    data = generate_shapes(tmp_path / "shapes", ShapesConfig())  # 2000 train / 200 eval
    mc = write_shapes_mc(data.root)
    common = {"recipe": "tiny-demo", "image_folder": str(data.image_folder)}
    wall, cpu = time.perf_counter(), _cpu_seconds()
    one = train(resolve_config({**common, "stage": 1, "model": str(tiny_checkpoint),
                                "data": [str(data.stage1)],
                                "output_dir": str(tmp_path / "stage1")})[0],
                show_progress=False)
    two = train(resolve_config({**common, "stage": 2, "model": str(one.output_dir),
                                "data": [str(data.stage2), str(mc)],
                                "output_dir": str(tmp_path / "stage2")})[0],
                show_progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu

    samples = json.loads(data.eval.read_text())
    report = evaluate(samples, TorchAnswerer(two.output_dir, max_new_tokens=4),
                      data.image_folder)
    summary = (f"multiple choice {report.multiple_choice}, by kind "
               f"{ {k: v['accuracy'] for k, v in report.by_kind.items()} }, "
               f"training {wall:.0f} s wall / {cpu:.0f} s CPU")
    print(summary)
    assert report.multiple_choice["n"] == 200
    assert report.multiple_choice["accuracy"] >= 0.90, summary
