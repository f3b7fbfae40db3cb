"""Ask about the frames of a camera, video, stream or folder and print each answer with
its latencies: the loop of a camera-driven robot, on the Python API.

    python examples/frame_loop.py BUNDLE FRAMES/ --prompt "Is the path clear?"
    python examples/frame_loop.py BUNDLE clip.mp4 --prompt "What is ahead?"
    python examples/frame_loop.py BUNDLE 0 --prompt "What is it?" --prompt "Colour?"

``llava-edge watch`` is the same loop as a command (JSON lines, structured answers,
several sources); this script shows the API it is made of: :class:`FrameSource` reads
frames on a thread and keeps the newest one (a folder is read in lockstep, every frame in
turn), ``LlavaEdge.watch`` asks every question about it. From the second question about
a frame on, the KV cache after the frame is reused, so only the question's own tokens are
evaluated (``prefill`` below).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from llava_edge import LlavaEdge
from llava_edge.runtimes.frame_source import FrameSource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("source", help="Camera index, video file, URL, folder or glob.")
    parser.add_argument("--prompt", action="append", default=None,
                        help="Question per frame (repeat for several).")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="One JSON line per answer.")
    args = parser.parse_args(argv)
    prompts = args.prompt or ["What is in the image?"]

    totals = []
    with LlavaEdge.load(args.bundle, n_threads=args.threads) as model, \
            FrameSource(args.source) as source:
        for record in model.watch(source, prompts, max_rounds=args.max_frames,
                                  max_new_tokens=args.max_new_tokens):
            t, name = record.timings_ms, record.frames[0].name
            totals.append(t["total_ms"])
            if args.json:
                print(json.dumps({"frame": name, "prompt": record.question,
                                  "text": record.answer, "age_s": record.age_s,
                                  "timings": t}), flush=True)
                continue
            image_from = ("cached" if t["embedding_cache_hits"] else
                          "encoded" if t["images_encoded"] else "in KV cache")
            print(f"{name} | {t['total_ms']:7.1f} ms total, {t['first_token_ms']:7.1f} ms "
                  f"first token, vision {t['vision_ms']:6.1f} ms ({image_from}), prefill "
                  f"{t['prefill_tokens']} tok ({t['reused_tokens']} reused) | "
                  f"{record.question} -> {record.answer!r}", flush=True)
        stats = source.stats
    if totals and not args.json:
        print(f"{len(totals)} answers, median {statistics.median(totals):.1f} ms; frames "
              f"{stats.read} read, {stats.taken} asked about, {stats.dropped} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
