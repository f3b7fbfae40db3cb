"""``llava-edge watch``: ask about the newest frame of a camera, video, stream or folder,
over and over, and write each answer as a JSON line."""

from __future__ import annotations

import json
import sys

import click

from llava_edge.cli.common import sampling_options, structured_options
from llava_edge.cli.run_cmd import (bundle_vision_backend_option, max_tiles_option,
                                    runtime_options, threads_option, tune_option)


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--source", "sources", multiple=True, required=True,
              help="Camera index, video file, RTSP/HTTP URL, folder of images or glob "
                   "(repeat for several: each round asks about all of them, in order).")
@click.option("--question", "questions", multiple=True,
              help="A question asked about every round's frames (repeatable).")
@click.option("--questions-file", type=click.File("r"), default=None,
              help="Questions, one per line (added after --question).")
@click.option("--every", "every_s", type=click.FloatRange(min=0), default=0.0,
              show_default=True,
              help="Seconds between rounds (0: a new round as soon as an answer is done).")
@click.option("--frames", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ask about the last N frames each source gave (oldest first): 2 for "
                   "before / after questions.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (default: until the source ends or Ctrl-C).")
@click.option("--max-rounds", type=click.IntRange(min=1), default=None,
              help="Stop after this many rounds.")
@click.option("--max-fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Decode at most this many frames per second (the others are skipped "
                   "unread, sparing CPU).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Play a video file or folder at this rate (default: the file's own; "
                   "30 for a folder with --realtime).")
@click.option("--realtime/--lockstep", default=None,
              help="Realtime: files and folders play at their frame rate and stale frames "
                   "are dropped (default for video files). Lockstep: every frame is asked "
                   "about in turn (default for folders). Cameras and URLs are always live.")
@click.option("--loop", is_flag=True, help="Restart a video file or folder at its end.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON lines to this file (default: stdout).")
@structured_options
@click.option("--max-new-tokens", default=64, show_default=True)
@sampling_options
@click.option("--system", default=None, help="Replace the template's system prompt.")
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: bundle's).")
@max_tiles_option
@threads_option
@tune_option
@runtime_options
@bundle_vision_backend_option
def watch(bundle, sources, questions, questions_file, every_s, frames, duration_s, max_rounds,
          max_fps, fps, realtime, loop, out_file, structured, max_new_tokens,
          temperature, top_k, top_p, repeat_penalty, seed, system, vision_precision, llm_quant,
          n_ctx, max_tiles, n_threads, use_tune, **runtime):
    """Ask QUESTIONs about the newest frames of SOURCE with BUNDLE, round after round.

    \b
    One JSON line per answer: the question, the answer (and its parsed value with
    --json-schema / --choice), the frames it was about (source, index, capture time),
    when it started, its first token, its end, its age (capture to end) and the stage
    timings. A last line ("type": "summary") counts frames read, asked about and dropped
    per source. Ctrl-C ends the watch cleanly (exit 0, summary written).

    \b
      llava-edge watch bundle/ --source 0 --question "Is the path clear?" --choice yes --choice no
      llava-edge watch bundle/ --source clip.mp4 --question "What changed?" --frames 2
    """
    from llava_edge.cli.interrupt import cancel_on_sigint
    from llava_edge.errors import Cancelled
    from llava_edge.runtimes.cancel import Cancel
    from llava_edge.runtimes.frame_source import FrameSource
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.watch import WatchSummary
    from llava_edge.runtimes.watch import watch as watch_loop

    questions = list(questions)
    if questions_file is not None:
        questions += [line.strip() for line in questions_file if line.strip()]
    if not questions:
        raise click.UsageError("give at least one --question (or --questions-file)")
    # Sources open (and fail, naming themselves) before the model loads.
    opened = [FrameSource(s, fps=fps, realtime=realtime, max_fps=max_fps, loop=loop)
              for s in sources]
    out = open(out_file, "w", encoding="utf-8") if out_file else sys.stdout
    summary = WatchSummary()
    try:
        for source in opened:
            source.start()
        with LlavaEdge.load(bundle, vision_precision=vision_precision, llm_quant=llm_quant,
                            n_ctx=n_ctx, n_threads=n_threads, max_tiles=max_tiles,
                            tune=use_tune, **runtime) as model:
            # Ctrl-C cancels the answer in progress at once (within a ubatch of a
            # prefill), and the watch ends with its summary; a second Ctrl-C is a
            # KeyboardInterrupt as usual.
            cancel = Cancel()
            records = watch_loop(
                model, opened, questions, every_s=every_s, frames=frames,
                duration_s=duration_s, max_rounds=max_rounds, summary=summary,
                cancel=cancel, max_new_tokens=max_new_tokens, temperature=temperature,
                top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed,
                system=system, **structured)
            try:
                with cancel_on_sigint(cancel):
                    for record in records:
                        _write_line(out, record.to_json())
            except (KeyboardInterrupt, Cancelled):  # the way a watch is meant to end
                records.close()
            if cancel.cancelled or summary.ended_by in ("cancelled", "stopped"):
                summary.ended_by = "interrupted"
        _write_line(out, summary.to_json())
    finally:
        for source in opened:
            source.close()
        if out is not sys.stdout:
            out.close()
    click.echo(f"watch: {summary.answers} answer(s) in {summary.rounds} round(s), "
               f"{summary.seconds:.1f} s, ended by {summary.ended_by}; " + "; ".join(
                   f"{s['source']}: {s['read']} read, {s['taken']} asked about, "
                   f"{s['dropped']} dropped" for s in summary.sources), err=True)


def _write_line(out, obj: dict) -> None:
    """One whole line per write, flushed: a reader following the file never sees half."""
    out.write(json.dumps(obj, default=str) + "\n")
    out.flush()
