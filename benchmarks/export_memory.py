"""Where `llava-edge export` peaks in memory: the export run in-process beside a sampler.

    python -m benchmarks.export_memory CHECKPOINT OUT_BUNDLE SAMPLES.json

A thread samples the process's resident set (VmRSS) every 0.25 s together with the main
thread's innermost llava-edge frames, so a peak can be read as "which export stage held
it". The export is the one of `llava-edge export CKPT --int4 --vision-precision int8,fp32
--llm-quant Q4_0,Q8_0,F16 --mmproj --allow-degraded`. The samples are written as JSON
[[seconds, rss_mb, [frames...]], ...]; results in
benchmarks/results/export-memory-tinyllava-1.1b-20261206/.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from llava_edge.export.bundle_export import ExportOptions, export_bundle

# = llava-edge export CKPT --int4 --vision-precision int8,fp32 --llm-quant Q4_0,Q8_0,F16
#   --mmproj --allow-degraded
TRACED_EXPORT = ExportOptions(vision_precisions=("int4", "int8", "fp32"),
                              llm_quants=("Q4_K_M", "Q4_0", "Q8_0", "F16"), mmproj=True,
                              allow_degraded=True)


def rss_mb() -> int:
    """This process's resident set now, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def our_frames(thread_id: int, depth: int = 4) -> list[str]:
    """The innermost `depth` frames of a thread that run llava-edge code, outermost first,
    as "module:function".

    Frames are told apart by their module's name, not their file's path, so this works
    the same for a checkout and for an installed wheel."""
    frame = sys._current_frames().get(thread_id)
    ours = []
    while frame is not None and len(ours) < depth:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("llava_edge."):
            ours.append(f"{module}:{frame.f_code.co_name}")
        frame = frame.f_back
    return ours[::-1]


def trace(work, interval_s: float = 0.25) -> tuple[object, list]:
    """Run `work()` in this thread while another samples RSS and its frames.

    Returns work's result and the samples [(seconds, rss_mb, frames), ...]."""
    samples, done, main_id = [], threading.Event(), threading.get_ident()

    def sample() -> None:
        t0 = time.monotonic()
        while True:
            samples.append((round(time.monotonic() - t0, 2), rss_mb(), our_frames(main_id)))
            if done.wait(interval_s):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, samples


def main(checkpoint: str, out: str, samples_file: str) -> None:
    _, samples = trace(lambda: export_bundle(checkpoint, out, TRACED_EXPORT, overwrite=True))
    Path(samples_file).write_text(json.dumps(samples))
    print("peak", max(samples, key=lambda s: s[1]))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:4])
