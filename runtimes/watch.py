"""Ask a model about live frames, over and over: the loop of a camera-driven robot.

    from llava_edge import LlavaEdge
    from llava_edge.runtimes.frame_source import FrameSource

    model = LlavaEdge.load("bundle/")
    with FrameSource(0) as camera:                      # a camera, video file, URL, folder
        for record in watch(model, [camera], ["Is the path clear?"]):
            print(record.answer, record.age_s)

Each round takes the newest frame of every source (a frame that arrived while the last
answer was being decoded replaces the older ones: :mod:`.frame_source` counts them as
dropped), asks every question about it, and yields one :class:`WatchRecord` per answer,
with the wall-clock times a robot needs to judge it: when the frame was captured, when
the answer started, its first token, its end, and the answer's age (capture to end).

``frames=N`` asks about the last N frames a round took (oldest first), per source; with
several sources (left and right camera) each round's images are every source's frames in
the order the sources were given. A frame asked about again takes its embeddings from the
model's embedding cache, so only the newest frame runs through the vision graph. Several
questions about the same frames reuse the KV cache up to the question.

Rounds start back to back (``every_s=0``: on every new answer), or every ``every_s``
seconds. ``duration_s`` / ``max_rounds`` end the loop; so does the end of a file or folder
source that does not loop. Stopping the iteration (``break``, ``close()``, Ctrl-C) stops
at once and leaves the model usable.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from llava_edge.errors import Cancelled, LlavaEdgeError, PromptError

if TYPE_CHECKING:
    from llava_edge.runtimes.cancel import Cancel
    from llava_edge.runtimes.frame_source import Frame, FrameSource
    from llava_edge.runtimes.pipeline import LlavaEdge

__all__ = ["FrameInfo", "WatchRecord", "WatchSummary", "watch"]


@dataclass(frozen=True)
class FrameInfo:
    """Which frame an answer was about (the pixels themselves stay out of the record)."""

    source: str
    index: int
    name: str
    captured_at: float  # time.time() when the frame was read

    @classmethod
    def of(cls, frame: "Frame") -> "FrameInfo":
        return cls(frame.source, frame.index, frame.name, frame.captured)


@dataclass
class WatchRecord:
    """One answer about the newest frame(s). Times are ``time.time()`` seconds."""

    round: int
    question: str
    answer: str
    stop_reason: str
    frames: list[FrameInfo]
    started_at: float
    first_token_at: float
    done_at: float
    age_s: float  # from the capture of the newest frame asked about to the answer's end
    n_prompt_tokens: int
    n_tokens: int  # tokens of the answer
    timings_ms: dict[str, float]
    value: Any = None  # the parsed answer, with a JSON schema or choices
    error: str | None = None  # a constrained answer that did not complete, say
    type: str = "answer"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class WatchSummary:
    """What a whole watch did, per source: frames read, asked about, dropped."""

    rounds: int = 0
    answers: int = 0
    errors: int = 0
    seconds: float = 0.0
    ended_by: str = "running"  # "duration" | "rounds" | "source ended" | "stopped"
    sources: list[dict] = field(default_factory=list)
    type: str = "summary"

    def to_json(self) -> dict:
        return asdict(self)


def watch(model: "LlavaEdge", sources: Sequence["FrameSource"], questions: Sequence[str], *,
          every_s: float = 0.0, frames: int = 1, duration_s: float | None = None,
          max_rounds: int | None = None, summary: WatchSummary | None = None,
          frame_timeout_s: float | None = None, cancel: "Cancel | None" = None,
          **ask_options) -> Iterator[WatchRecord]:
    """Yield a :class:`WatchRecord` per question per round (see the module docstring).

    ``sources`` are started here if they were not; the caller closes them.
    ``ask_options`` go to :meth:`LlavaEdge.ask` (max_new_tokens, sampling, system,
    json_schema, choices). ``summary``, when given, is kept up to date (the counts are
    right even if the caller stops the iteration early). ``cancel``: once signalled, the
    answer in progress stops within one llama.cpp ubatch, one vision-graph node or one
    token (:class:`~llava_edge.errors.Cancelled` is raised, ``summary.ended_by`` is
    "cancelled"), and no new round starts.
    """
    questions = [q for q in questions if q.strip()]
    if not questions:
        raise PromptError("watch needs at least one question")
    if not sources:
        raise LlavaEdgeError("watch needs at least one frame source")
    if frames < 1:
        raise PromptError(f"frames must be at least 1, got {frames}")
    if every_s < 0:
        raise PromptError(f"every_s must be >= 0, got {every_s}")
    summary = summary if summary is not None else WatchSummary()
    for source in sources:
        source.start()
    history = [deque(maxlen=frames) for _ in sources]
    t_start = time.monotonic()
    summary.ended_by = "running"
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                summary.ended_by = "cancelled"
                return
            if duration_s is not None and time.monotonic() - t_start >= duration_s:
                summary.ended_by = "duration"
                return
            if max_rounds is not None and summary.rounds >= max_rounds:
                summary.ended_by = "rounds"
                return
            round_start = time.monotonic()
            if not _take_newest(sources, history, frames, frame_timeout_s):
                summary.ended_by = "source ended"
                return
            taken = [f for h in history for f in h]
            infos = [FrameInfo.of(f) for f in taken]
            images = [f.image for f in taken]
            newest = max(f.captured for f in taken)
            for question in questions:
                try:
                    record = _answer(model, images, question, ask_options | {"cancel": cancel},
                                     summary.rounds, infos, newest)
                except Cancelled:
                    summary.ended_by = "cancelled"
                    raise
                summary.answers += 1
                summary.errors += record.error is not None
                _update(summary, sources, t_start)
                yield record
            summary.rounds += 1
            _update(summary, sources, t_start)
            wait = every_s - (time.monotonic() - round_start)
            if wait > 0:
                time.sleep(wait)
    finally:
        if summary.ended_by == "running":
            summary.ended_by = "stopped"
        _update(summary, sources, t_start)


def _take_newest(sources, history, frames: int, timeout: float | None) -> bool:
    """Append each source's newest frame to its history (at the start, until it holds
    ``frames``); False when a source has ended."""
    for source, h in zip(sources, history):
        while True:
            frame = source.next(timeout=timeout)
            if frame is None:
                return False
            h.append(frame)
            if len(h) == frames:
                break
    return True


def _answer(model, images, question: str, ask_options: dict, round_: int,
            infos: list[FrameInfo], newest: float) -> WatchRecord:
    from llava_edge.errors import StructuredOutputError

    started = time.time()
    answer = model.ask(images, question, **ask_options)
    done = time.time()
    value = error = None
    if answer.structured is not None:
        try:
            value = answer.json() if answer.structured == "json" else answer.choice()
        except StructuredOutputError as e:  # cut at max_new_tokens: said, not fatal
            error = str(e)
    return WatchRecord(
        round=round_, question=question, answer=answer.text, stop_reason=answer.stop_reason,
        frames=infos, started_at=started,
        first_token_at=started + answer.timings.first_token_ms / 1000.0, done_at=done,
        age_s=done - newest, n_prompt_tokens=answer.n_prompt_tokens, n_tokens=answer.n_tokens,
        timings_ms=asdict(answer.timings), value=value, error=error)


def _update(summary: WatchSummary, sources, t_start: float) -> None:
    summary.seconds = time.monotonic() - t_start
    summary.sources = [{"source": str(s.source), **asdict(s.stats)} for s in sources]
