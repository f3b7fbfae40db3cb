"""One model, one thread, a bounded FIFO queue.

The model (not thread-safe) is only ever used by the worker thread. Requests are
:class:`Job` s: :meth:`Worker.submit` admits one or raises :class:`QueueFull`; the thread
takes jobs in arrival order and reports on each through its ``sink`` callback (the HTTP
side turns those :class:`JobEvent` s into a response). Each job carries a
:class:`~llava_edge.runtimes.cancel.Cancel` that the model watches, so a client that goes
away or runs out of time frees the model within one vision-graph node, one llama.cpp
ubatch of the prefill or one token, and the next job starts at once; the model's KV
cache and prefix reuse stay consistent.

Memory is bounded twice: ``max_queue`` jobs may wait, and the decoded images of the jobs
admitted and not yet finished (waiting or running) may take ``max_image_bytes`` in all
(width x height x 3 each). A job's bytes are held from :meth:`Worker.submit` until the
worker thread is done with it, however it ends (answered, failed, timed out, cancelled:
a cancelled job that still waits is dropped when its turn comes, like its queue slot).

No asyncio here: the sink is any callable, which keeps this module testable on its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

from llava_edge.errors import Cancelled, LlavaEdgeError
from llava_edge.runtimes.cancel import Cancel
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.serve.openai_schema import ChatRequest

log = logging.getLogger(__name__)

EventKind = Literal["start", "piece", "done", "error", "cancelled"]
CancelReason = Literal["disconnect", "timeout", "shutdown"]


@dataclass
class JobEvent:
    """What the worker reports: ``start`` (the prompt was accepted and generation begins),
    ``piece`` (text, streamed jobs only), ``done`` (``answer`` set), ``error`` (``error``
    set: a :class:`LlavaEdgeError` is the client's fault, anything else ours) or
    ``cancelled``."""

    kind: EventKind
    text: str = ""
    answer: object = None  # llava_edge.runtimes.pipeline.Answer
    error: BaseException | None = None


@dataclass
class Job:
    """One request on its way through the worker."""

    request: ChatRequest
    sink: Callable[[JobEvent], None]
    max_new_tokens: int
    stream_pieces: bool = False
    signal: Cancel = field(default_factory=Cancel)  # what the model watches
    held_image_bytes: int = 0  # counted in WorkerStats.queue_image_bytes until it ends

    @property
    def image_bytes(self) -> int:
        """What the request's decoded images take: width x height x 3 (RGB) each."""
        return sum(im.width * im.height * 3 for im in self.request.images)

    def cancel(self, reason: CancelReason) -> None:
        """Ask the worker to drop this job (now if it runs, or before it starts); safe
        from any thread."""
        self.signal.cancel(reason)

    @property
    def cancel_reason(self) -> CancelReason | None:
        return self.signal.reason  # type: ignore[return-value]

    @property
    def cancelled(self) -> bool:
        return self.signal.cancelled


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already, or the job's images would take the
    queue over ``max_image_bytes``; ``retry_after_s`` is a guess at when there will be
    room."""

    def __init__(self, retry_after_s: int, what: str = "the queue is full"):
        super().__init__(f"{what}; retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ImagesTooLarge(Exception):
    """The job's images alone take more than ``max_image_bytes``: it can never be
    admitted, so retrying is pointless."""

    def __init__(self, image_bytes: int, max_image_bytes: int):
        super().__init__(f"the request's decoded images take {image_bytes:,} bytes, over "
                         f"the server's limit of {max_image_bytes:,} bytes for the images "
                         "of queued and running requests")
        self.image_bytes, self.max_image_bytes = image_bytes, max_image_bytes


@dataclass
class WorkerStats:
    """Counters for ``/health``: jobs by outcome, and the queue right now."""

    busy: bool = False
    queue_depth: int = 0  # admitted, not started
    max_queue: int = 0
    queue_image_bytes: int = 0  # decoded images of the jobs waiting or running
    max_queue_image_bytes: int | None = None  # None: no byte bound
    accepted: int = 0
    rejected: int = 0  # queue full, by count or by image bytes (429)
    rejected_too_large: int = 0  # images over the whole byte bound (413)
    completed: int = 0
    cancelled: int = 0  # the client went away
    timed_out: int = 0
    failed: int = 0  # a prompt the model could not take, or an internal error


class Worker:
    """Runs ``model`` on one thread for jobs taken FIFO from a queue of ``max_queue``
    waiting jobs (the running one is not counted), whose images, the running job's
    included, take at most ``max_image_bytes`` (None: no such bound)."""

    def __init__(self, model: LlavaEdge, max_queue: int = 16,
                 max_image_bytes: int | None = None):
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if max_image_bytes is not None and max_image_bytes < 0:
            raise ValueError("max_image_bytes must be >= 0 or None")
        self.model = model
        self.max_queue = max_queue
        self.max_image_bytes = max_image_bytes
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stats = WorkerStats(max_queue=max_queue, max_queue_image_bytes=max_image_bytes)
        self._mean_job_s = 1.0  # running mean, for Retry-After
        self._current: Job | None = None
        # Test hooks (see pause / hold_tokens): paused while _taking is clear, holding
        # while _holding is true.
        self._taking = threading.Event()
        self._taking.set()
        self._holding = False
        self._thread = threading.Thread(target=self._loop, name="llava-edge-worker", daemon=True)
        self._started = False
        self._closing = False

    # -- control --------------------------------------------------------------------------

    def start(self) -> "Worker":
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def submit(self, job: Job) -> None:
        """Admit ``job`` at the back of the queue, or raise :class:`QueueFull` (try again
        later) or :class:`ImagesTooLarge` (never fits)."""
        nbytes = job.image_bytes
        with self._lock:
            s = self._stats
            limit = self.max_image_bytes
            if limit is not None and nbytes > limit:
                s.rejected_too_large += 1
                raise ImagesTooLarge(nbytes, limit)
            retry_s = max(1, round(self._mean_job_s * (s.queue_depth + 1)))
            # Full: max_queue jobs wait already, and none of them is about to be taken
            # by an idle worker (which is what lets max_queue=0 mean "no waiting").
            if s.queue_depth >= self.max_queue and (s.busy or s.queue_depth > 0):
                s.rejected += 1
                raise QueueFull(retry_s)
            # Fits once the jobs ahead are done (alone it fits, checked above).
            if limit is not None and s.queue_image_bytes + nbytes > limit:
                s.rejected += 1
                raise QueueFull(retry_s, "the images of queued and running requests would "
                                         "go over the server's limit for them")
            s.queue_depth += 1
            s.queue_image_bytes += nbytes
            s.accepted += 1
        job.held_image_bytes = nbytes
        self._queue.put(job)

    def stats(self) -> WorkerStats:
        with self._lock:
            return WorkerStats(**asdict(self._stats))

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs and what waits, stop the thread, close the model."""
        self._closing = True
        with self._lock:
            if self._current is not None:
                self._current.cancel("shutdown")
        self._taking.set()
        self._holding = False
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)
        if not self._thread.is_alive():  # never free the model under a running prefill
            self.model.close()

    # Test hooks: make "the worker is busy" deterministic instead of a matter of timing.

    def pause(self) -> None:
        """Stop taking jobs from the queue (the running one carries on)."""
        self._taking.clear()

    def resume(self) -> None:
        self._taking.set()

    def hold_tokens(self, on: bool) -> None:
        """While on, a running job waits after each piece of text until it is cancelled
        or the hold is lifted."""
        self._holding = on

    # -- the thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._taking.wait()  # paused (a test hook): the job counts as queued meanwhile
            if self._closing:
                job.cancel("shutdown")  # answered at once, without running the model
            with self._lock:
                self._stats.queue_depth -= 1
                self._stats.busy = True
                self._current = job
            start = time.monotonic()
            try:
                outcome, last = self._run(job)
            except BaseException as e:  # noqa: BLE001 - the thread must survive any job
                log.exception("job failed")
                outcome, last = "failed", JobEvent("error", error=e)
            # Count before the last event goes out, so that /health agrees with what a
            # client has just been told.
            with self._lock:
                s = self._stats
                setattr(s, outcome, getattr(s, outcome) + 1)
                s.queue_image_bytes -= job.held_image_bytes  # every way a job ends
                job.held_image_bytes = 0
                s.busy = False
                self._current = None
                self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.monotonic() - start)
            _deliver(job, last)

    def _run(self, job: Job) -> tuple[str, JobEvent]:
        """Run one job; return the counter it ends in and its last event."""
        if job.cancelled:
            return self._cancelled(job)
        r = job.request
        try:
            stream = self.model.stream_messages(
                r.messages, r.images, max_new_tokens=job.max_new_tokens,
                temperature=r.temperature, top_p=r.top_p, seed=r.seed, stop=r.stop,
                json_schema=r.json_schema, cancel=job.signal)
        except LlavaEdgeError as e:  # e.g. the prompt does not fit the context
            return "failed", JobEvent("error", error=e)
        _deliver(job, JobEvent("start"))
        pieces = iter(stream)
        try:
            for piece in pieces:
                if job.stream_pieces:
                    _deliver(job, JobEvent("piece", text=piece))
                while self._holding and not job.cancelled:
                    job.signal.wait(0.01)
                if job.cancelled:
                    break
        except Cancelled:  # stopped inside the model (vision, prefill or a token)
            pass
        finally:
            pieces.close()  # ends decoding now; sets stream.answer
        if job.cancelled:
            return self._cancelled(job)
        return "completed", JobEvent("done", answer=stream.answer)

    @staticmethod
    def _cancelled(job: Job) -> tuple[str, JobEvent]:
        return ("timed_out" if job.cancel_reason == "timeout" else "cancelled",
                JobEvent("cancelled"))


def _deliver(job: Job, event: JobEvent) -> None:
    try:
        job.sink(event)
    except Exception:  # noqa: BLE001 - a gone client (closed loop) must not stop the worker
        log.debug("could not deliver %s", event.kind, exc_info=True)
