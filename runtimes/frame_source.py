"""Frames from a camera, stream, video file, folder or glob, read by a background thread.

    from llava_edge.runtimes.frame_source import FrameSource
    with FrameSource(0) as frames:            # camera 0; or "clip.mp4", "rtsp://...", "shots/"
        for frame in frames:                  # frame.image: H x W x 3 uint8 RGB
            print(frame.index, model.ask(frame.image, "What is on the table?").text)

A model answers in seconds while a camera gives 30 frames a second, so the question
asked next must see the newest frame, not the head of a queue. Two modes:

* **live** (``realtime=True``; the default for cameras, URLs and video files): the reader
  runs on its own and keeps only the newest frame; ``next()`` returns the newest frame
  not taken yet and a frame replaced before it was taken counts as dropped. A video file
  is played at its own rate (``CAP_PROP_FPS``, or ``fps``) so that it behaves like a
  camera; so is a folder, at ``fps`` (30 when not given). ``max_fps`` caps how many
  frames a second are decoded: the others are only grabbed (cheap) and count as dropped.
* **lockstep** (``realtime=False``; the default for folders and globs): every frame is
  delivered in order and none is dropped; the reader waits for the consumer. An explicit
  ``fps`` is then a cap on the delivery rate; ``max_fps`` does not apply.

``next()`` blocks until a frame is there and returns ``None`` only when the source has
ended (or was closed) and every frame it delivered has been taken; a ``timeout`` that
passes raises :class:`TimeoutError`. A failure in the reader thread is raised by
``next()`` as :class:`FrameSourceError`, after the frame still waiting, if any. At the end
of a source that does not loop, ``stats.read == stats.taken + stats.dropped``.

OpenCV (the ``[video]`` extra) is imported only for cameras, URLs and video files;
folders and globs of images need Pillow alone.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from llava_edge.errors import FrameSourceError, ImageError, require_extra
from llava_edge.runtimes.images import load_image

__all__ = ["Frame", "FrameSource", "FrameStats", "open_source"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_FPS = 30.0  # a folder (or a video without a frame rate) played live without fps
MAX_READ_FAILURES = 50  # consecutive failed reads after which a camera / URL has stopped
_FAILURE_PAUSE_S = 0.02  # between failed reads: 50 failures take about a second
_JOIN_TIMEOUT_S = 2.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy images is not meaningful
class Frame:
    image: np.ndarray  # H x W x 3 uint8, RGB
    index: int  # 0-based number in the source, counting dropped frames too
    captured: float  # time.time() when the frame was read
    source: str  # the source as the user gave it
    name: str  # file name for folders / globs, f"frame {index}" otherwise


@dataclass(frozen=True)
class FrameStats:
    read: int  # frames read (or grabbed) from the source
    taken: int  # frames handed out by next()
    dropped: int  # frames read that were replaced (or not decoded) before being taken


class _Capture:
    """An OpenCV capture (camera, URL, video file): opened by start(), then used by the
    reader thread only."""

    def __init__(self, target: int | str, label: str, open_timeout_s: float,
                 request_fps: float | None = None):
        require_extra("video", f"reading {label}", "cv2")
        import cv2

        self._cv2, self._target, self._label = cv2, target, label
        self._timeout_ms = int(open_timeout_s * 1000)
        self._cap = self._open()
        if request_fps:
            self._cap.set(cv2.CAP_PROP_FPS, request_fps)  # a request; the device may ignore it
        rate = self._cap.get(cv2.CAP_PROP_FPS)
        self.native_fps = rate if rate and 0 < rate < 1000 else None

    def _open(self):
        cv2 = self._cv2
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._timeout_ms]
        if isinstance(self._target, str) and _URL.match(self._target):
            # a stream that goes quiet must not block grab() (and close()) for long
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms]
        cap = cv2.VideoCapture(self._target, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            if isinstance(self._target, int):
                raise FrameSourceError(f"{self._label}: OpenCV could not open this camera")
            raise FrameSourceError(f"{self._label}: OpenCV could not open it as a video")
        return cap

    def grab(self) -> bool:
        return bool(self._cap.grab())

    def retrieve(self, index: int) -> tuple[np.ndarray | None, str]:
        ok, bgr = self._cap.retrieve()
        if not ok or bgr is None:
            return None, f"frame {index}"
        cv2 = self._cv2
        if bgr.ndim == 2:
            code = cv2.COLOR_GRAY2RGB
        else:
            code = cv2.COLOR_BGRA2RGB if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(bgr, code), f"frame {index}"

    def restart(self) -> None:
        # Reopening is what works for every container; seeking to 0 does not always.
        self._cap.release()
        self._cap = self._open()

    def release(self) -> None:
        self._cap.release()


class _Images:
    """Image files in order, read with Pillow."""

    native_fps = None

    def __init__(self, files: list[Path], label: str):
        self._files, self._label, self._next = files, label, 0

    def grab(self) -> bool:
        if self._next >= len(self._files):
            return False
        self._next += 1
        return True

    def retrieve(self, index: int) -> tuple[np.ndarray, str]:
        path = self._files[self._next - 1]
        try:
            return np.array(load_image(path)), path.name
        except ImageError as e:
            raise FrameSourceError(f"{self._label}: {e}") from None

    def restart(self) -> None:
        self._next = 0

    def release(self) -> None:
        pass


def _image_files(paths) -> list[Path]:
    return sorted(p for p in map(Path, paths) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FrameSource:
    """Frames from ``source``: a camera index (int or digits), a URL, a video file, a folder
    of images or a glob pattern. See the module docstring for the two modes.

    The constructor raises :class:`FrameSourceError` for a source that does not exist (no
    such path, an empty folder, a glob matching no image); ``start()`` for one that cannot
    be opened (and :class:`MissingExtraError` when OpenCV is needed and not installed).
    """

    def __init__(self, source: str | int | os.PathLike, *, fps: float | None = None,
                 realtime: bool | None = None, max_fps: float | None = None,
                 loop: bool = False, open_timeout_s: float = 10.0):
        for option, value in (("fps", fps), ("max_fps", max_fps),
                              ("open_timeout_s", open_timeout_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{option} must be > 0, got {value}")
        self.source = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        self._fps, self._max_fps, self._loop = fps, max_fps, loop
        self._open_timeout_s = open_timeout_s
        self._files: list[Path] = []
        self._path = self.source  # what OpenCV opens for a video file (~ expanded)
        self.kind = self._classify(source)
        self._realtime = (self.kind != "images") if realtime is None else bool(realtime)
        self._reader: _Capture | _Images | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._slot: Frame | None = None  # the newest frame not taken yet
        self._read = self._taken = self._dropped = 0
        self._finished = False  # the reader thread has ended (end of source, error or close)
        self._error: FrameSourceError | None = None
        self._closed = False

    def _classify(self, source) -> str:
        s = self.source
        if (isinstance(source, int) and not isinstance(source, bool)) or s.isdigit():
            return "camera"
        if _URL.match(s):
            return "url"
        path = Path(s).expanduser()
        if path.is_dir():  # an existing name wins over glob characters in it
            self._files = _image_files(path.iterdir())
            if not self._files:
                raise FrameSourceError(f"{s}: folder has no image files "
                                       f"({' '.join(sorted(IMAGE_SUFFIXES))})")
            return "images"
        if path.is_file():
            self._path = str(path)
            return "video"
        if any(c in s for c in "*?["):
            self._files = _image_files(glob.glob(os.path.expanduser(s), recursive=True))
            if not self._files:
                raise FrameSourceError(f"{s}: no image files match this pattern")
            return "images"
        raise FrameSourceError(f"no such camera, file, folder or URL: {s}")

    @property
    def live(self) -> bool:
        """True in live (latest-frame) mode, False in lockstep."""
        return self._realtime

    @property
    def ended(self) -> bool:
        """True once next() has nothing more to give (source ended, failed or closed)."""
        with self._cond:
            return self._closed or (self._finished and self._slot is None)

    @property
    def stats(self) -> FrameStats:
        with self._cond:
            return FrameStats(self._read, self._taken, self._dropped)

    def start(self) -> "FrameSource":
        """Open the source and start the reader thread (once; later calls do nothing)."""
        if self._thread is not None:
            return self
        if self._closed:
            raise FrameSourceError(f"{self._label()}: the frame source is closed")
        if self.kind == "images":
            self._reader = _Images(self._files, self.source)
        elif self.kind == "video":
            self._reader = _Capture(self._path, self._label(), self._open_timeout_s)
        else:
            target = int(self.source) if self.kind == "camera" else self.source
            self._reader = _Capture(target, self._label(), self._open_timeout_s, self._fps)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"frames {self._label()}")
        self._thread.start()
        return self

    def next(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not taken yet, waiting for one; None at the end of the source or
        once closed. Raises TimeoutError after ``timeout`` seconds without a new frame, and
        FrameSourceError when the reader failed. Starts the source if needed."""
        if not self._closed:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._slot is not None:
                    frame, self._slot = self._slot, None
                    self._taken += 1
                    self._cond.notify_all()  # a lockstep reader waits for the empty slot
                    return frame
                if self._error is not None:
                    raise self._error
                if self._finished or self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self._label()}: no new frame within {timeout} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        """Stop the reader thread and release the source; safe to call more than once,
        from any thread. The thread releases the capture itself (releasing it under a
        blocked grab() is not safe); it is a daemon, so a stuck device cannot hang exit."""
        with self._cond:
            self._closed = True
            if self._slot is not None:  # never taken now: dropped, so the counts still add up
                self._slot = None
                self._dropped += 1
            self._cond.notify_all()
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> "FrameSource":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"FrameSource({self.source!r}, kind={self.kind}, live={self.live})"

    def _label(self) -> str:
        return f"camera {self.source}" if self.kind == "camera" else self.source

    # -- the reader thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read_frames()
        except FrameSourceError as e:
            self._fail(e)
        except Exception as e:  # anything else (an OpenCV error, ...) still reaches next()
            err = FrameSourceError(f"{self._label()}: reading failed: {type(e).__name__}: {e}")
            err.__cause__ = e
            self._fail(err)
        finally:
            try:
                self._reader.release()
            except Exception:  # nothing left to do about a device that fails to close
                pass
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _fail(self, error: FrameSourceError) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _read_frames(self) -> None:
        reader, live, files = self._reader, self._realtime, self.kind in ("video", "images")
        # Files and folders are paced (a camera paces itself): live at the file's rate,
        # lockstep only when fps is given, as a cap.
        rate = (self._fps or reader.native_fps or DEFAULT_FPS) if live else self._fps
        period = 1.0 / rate if (files and rate) else None
        decode_gap = 1.0 / self._max_fps if (live and self._max_fps) else None
        next_decode = float("-inf")
        t0 = time.monotonic()
        n = 0  # frames grabbed since the start, across loops: frame n is due at t0 + n * period
        index = 0
        since_restart = 0
        failures = 0
        while not self._stop.is_set():
            if period is not None:
                delay = t0 + n * period - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            if not reader.grab():
                if files:
                    if self._loop and since_restart > 0:
                        reader.restart()
                        since_restart = 0
                        continue
                    return  # the end of the file / folder
                failures = self._failed(failures)
                continue
            since_restart += 1
            i, index, n = index, index + 1, n + 1
            if period is not None and not live and time.monotonic() > t0 + n * period:
                t0 = time.monotonic() - n * period  # lockstep waited on the consumer: no burst
            # Decide whether to decode: files use their own clock (exact, no jitter), cameras
            # the wall clock; a live file that fell a frame behind skips like a camera would.
            stamp = (n - 1) * period if period is not None else time.monotonic()
            skip = live and period is not None and time.monotonic() >= t0 + n * period
            if decode_gap is not None and not skip:
                skip = stamp < next_decode
                # Anchored to its schedule, so that jitter does not lower the rate; a
                # schedule more than a gap behind starts again from this frame.
                if not skip and stamp - next_decode < decode_gap:
                    next_decode += decode_gap
                elif not skip:
                    next_decode = stamp + decode_gap
            image = None
            if not skip:
                image, name = reader.retrieve(i)
                if image is None and self.kind == "video":
                    raise FrameSourceError(f"{self._label()}: OpenCV could not decode frame {i}")
            if image is None:  # skipped, or a camera frame that did not decode
                with self._cond:
                    self._read += 1
                    self._dropped += 1
                if not skip:
                    failures = self._failed(failures)
                continue
            failures = 0
            self._put(Frame(image, i, time.time(), self.source, name))

    def _failed(self, failures: int) -> int:
        """One more failed read from a camera / URL; too many in a row end the source."""
        failures += 1
        if failures >= MAX_READ_FAILURES:
            what = "camera" if self.kind == "camera" else "stream"
            raise FrameSourceError(f"{self._label()}: the {what} stopped giving frames "
                                   f"({failures} reads failed in a row)")
        self._stop.wait(_FAILURE_PAUSE_S)
        return failures

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if not self._realtime:  # lockstep: a slot of one, wait until it is taken
                while self._slot is not None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            elif self._slot is not None:
                self._dropped += 1
            self._read += 1
            self._slot = frame
            self._cond.notify_all()


def open_source(source: str | int | os.PathLike, **options) -> FrameSource:
    """``FrameSource(source, **options).start()``."""
    return FrameSource(source, **options).start()
