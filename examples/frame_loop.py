"""Ask about every frame of a folder of images, or of a video (with OpenCV installed),
and print each answer with its latencies: the loop of a camera-driven robot.

    python examples/frame_loop.py BUNDLE FRAMES/ --prompt "Is the path clear?"
    python examples/frame_loop.py BUNDLE clip.mp4 --prompt "What is ahead?" --every 10
    python examples/frame_loop.py BUNDLE FRAMES/ --prompt "What is it?" --prompt "Colour?"

Several ``--prompt`` ask each frame several questions: from the second one on, the KV
cache after the frame is reused, so only the question's own tokens are evaluated
(``prefill`` below). A frame seen before takes its image embeddings from the cache.
OpenCV gives BGR frames, handed over as they are with ``bgr=True``.

One model may be shared by threads (requests are serialized by its lock); for frames
from several cameras in parallel, load one model per camera thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Iterator

from llava_edge import LlavaEdge

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def frames(source: Path, every: int) -> Iterator[tuple[str, object, bool]]:
    """(name, image, is_bgr) for every ``every``-th frame of a folder or a video file."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for i, path in enumerate(files):
            if i % every == 0:
                yield path.name, path, False
        return
    try:
        import cv2
    except ImportError:
        sys.exit(f"{source}: not a folder, and reading a video needs OpenCV "
                 "(pip install opencv-python-headless)")
    video = cv2.VideoCapture(str(source))
    if not video.isOpened():
        sys.exit(f"{source}: OpenCV cannot open this video")
    i = 0
    try:
        while True:
            ok, frame = video.read()
            if not ok:
                return
            if i % every == 0:
                yield f"frame {i}", frame, True  # numpy HxWx3 uint8, BGR
            i += 1
    finally:
        video.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("source", type=Path, help="A folder of images or a video file.")
    parser.add_argument("--prompt", action="append", default=None,
                        help="Question per frame (repeat for several).")
    parser.add_argument("--every", type=int, default=1, help="Use every N-th frame.")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="One JSON line per answer.")
    args = parser.parse_args(argv)
    prompts = args.prompt or ["What is in the image?"]

    totals = []
    with LlavaEdge.load(args.bundle, n_threads=args.threads) as model:
        for n, (name, image, bgr) in enumerate(frames(args.source, max(1, args.every))):
            if args.max_frames is not None and n >= args.max_frames:
                break
            for prompt in prompts:
                a = model.ask(image, prompt, max_new_tokens=args.max_new_tokens, bgr=bgr)
                t = a.timings
                totals.append(t.total_ms)
                if args.json:
                    print(json.dumps({"frame": name, "prompt": prompt, "text": a.text,
                                      "timings": vars(t)}), flush=True)
                else:
                    image_from = ("cached" if t.embedding_cache_hits else
                                  "encoded" if t.images_encoded else "in KV cache")
                    print(f"{name} | {t.total_ms:7.1f} ms total, {t.first_token_ms:7.1f} ms "
                          f"first token, vision {t.vision_ms:6.1f} ms ({image_from}), "
                          f"prefill {t.prefill_tokens} tok ({t.reused_tokens} reused) | "
                          f"{prompt} -> {a.text!r}", flush=True)
    if totals and not args.json:
        print(f"{len(totals)} answers, median {statistics.median(totals):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
