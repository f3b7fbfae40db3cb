"""Run export_bundle in-process with a sampler thread: RSS every 0.25 s and the main
thread's innermost llava-edge frames, to find where the export's peak RSS comes from.

    python trace_export.py CHECKPOINT OUT_BUNDLE SAMPLES.json
"""
import json
import sys
import threading
import time
import traceback
from pathlib import Path

from llava_edge.export.bundle_export import ExportOptions, export_bundle

ROOT = str(Path(__file__).resolve().parents[3])  # the checkout: frames under it are ours


def rss_mb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def sample(samples: list, done: threading.Event, main_id: int) -> None:
    t0 = time.monotonic()
    while not done.is_set():
        frame = sys._current_frames().get(main_id)
        stack = traceback.extract_stack(frame) if frame else []
        ours = [f"{Path(f.filename).name}:{f.name}" for f in stack
                if f.filename.startswith(ROOT) and "/.venv/" not in f.filename]
        samples.append((round(time.monotonic() - t0, 2), rss_mb(), ours[-4:]))
        time.sleep(0.25)


def main(checkpoint: str, out: str, samples_file: str) -> None:
    samples, done = [], threading.Event()
    sampler = threading.Thread(target=sample, daemon=True,
                               args=(samples, done, threading.get_ident()))
    sampler.start()
    # = llava-edge export CKPT --int4 --vision-precision int8,fp32
    #   --llm-quant Q4_0,Q8_0,F16 --mmproj --allow-degraded
    opts = ExportOptions(vision_precisions=("int4", "int8", "fp32"),
                         llm_quants=("Q4_K_M", "Q4_0", "Q8_0", "F16"), mmproj=True,
                         allow_degraded=True)
    export_bundle(checkpoint, out, opts, overwrite=True)
    done.set()
    sampler.join()
    Path(samples_file).write_text(json.dumps(samples))
    print("peak", max(samples, key=lambda s: s[1]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
