"""A request's cancel signal, set from any thread (or a signal handler), seen within one
llama.cpp ubatch or one vision-graph node.

    cancel = Cancel()
    threading.Timer(2.0, cancel.cancel, ("timeout",)).start()
    try:
        answer = model.ask(image, "Describe it.", cancel=cancel)
    except Cancelled as e:
        print("stopped:", e.reason)

The pipeline hands the signal to its backends for the request's duration: llama.cpp
polls it from its abort callback between graph nodes, ONNX Runtime gets its run options'
``terminate`` set through :meth:`Cancel.on_cancel`; between stages the pipeline calls
:meth:`Cancel.check`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from llava_edge.errors import Cancelled

__all__ = ["Cancel", "Cancelled"]


class Cancel:
    """Set once (the first reason wins); never cleared. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the request to stop; runs the hooks registered with :meth:`on_cancel`."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self._event.set()
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the signal is set."""
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    @contextmanager
    def on_cancel(self, hook: Callable[[], None]) -> Iterator[None]:
        """Within the block, call ``hook`` (from the cancelling thread) when the signal
        is set; at once if it is set already. For C code that takes a stop flag of its
        own, such as ONNX Runtime's ``RunOptions.terminate``."""
        with self._lock:
            self._hooks.append(hook)
            now = self._event.is_set()
        if now:
            hook()
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(hook)
