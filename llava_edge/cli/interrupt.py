"""Ctrl-C that stops the running request promptly, even while it waits in C.

Python runs a signal handler only in the main thread, between bytecodes: not while
llama_decode or an ONNX Runtime run holds that thread. The C-level handler also writes
the signal's number to the wakeup fd (:func:`signal.set_wakeup_fd`); a watcher thread
reads it and sets the request's :class:`~llava_edge.runtimes.cancel.Cancel` at once, which
llama.cpp's abort callback and ONNX Runtime's ``terminate`` see within one ubatch or
one graph node.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from llava_edge.runtimes.cancel import Cancel

REASON = "interrupted"


@contextmanager
def cancel_on_sigint(cancel: Cancel) -> Iterator[None]:
    """Within the block, Ctrl-C sets ``cancel`` (reason ``"interrupted"``); a second
    Ctrl-C raises KeyboardInterrupt as usual. Outside the main thread: does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def handler(signum, frame) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        cancel.cancel(REASON)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it

    def watch() -> None:
        while byte := os.read(read_fd, 1):  # b"": the write end was closed
            if byte[0] == signal.SIGINT:
                cancel.cancel(REASON)

    watcher = threading.Thread(target=watch, name="llava-edge-sigint", daemon=True)
    watcher.start()
    old_handler = signal.signal(signal.SIGINT, handler)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old_handler)
        os.close(write_fd)
        watcher.join()
        os.close(read_fd)
