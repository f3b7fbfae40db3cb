"""Run export_bundle in-process with a sampler thread: RSS every 0.25 s and the main
thread's innermost project frames, to find where the export's peak RSS comes from."""
import sys, threading, time, json, traceback, os
from pathlib import Path

samples = []
main_id = threading.main_thread().ident
stop = False

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def sampler():
    t0 = time.monotonic()
    while not stop:
        frame = sys._current_frames().get(main_id)
        stack = traceback.extract_stack(frame) if frame else []
        ours = [f"{Path(f.filename).name}:{f.name}" for f in stack
                if "/work/main/" in f.filename and "/.venv/" not in f.filename]
        samples.append((round(time.monotonic() - t0, 2), round(rss_mb()), ours[-4:]))
        time.sleep(0.25)

th = threading.Thread(target=sampler, daemon=True); th.start()
from llava_edge.export.bundle_export import ExportOptions, export_bundle
opts = ExportOptions(vision_precisions=("int4", "int8", "fp32"),
                     llm_quants=("Q4_K_M", "Q4_0", "Q8_0", "F16"), mmproj=True,
                     allow_degraded=True)
export_bundle(sys.argv[1], sys.argv[2], opts, overwrite=True)
stop = True; th.join()
json.dump(samples, open("/tmp/mem/samples.json", "w"))
peak = max(samples, key=lambda s: s[1])
print("peak", peak)
