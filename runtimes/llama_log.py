"""Where llama.cpp's log output goes: nowhere by default, stderr when verbose, or a
Python callback while a piece of work runs (to turn its messages into progress or into
the text of an error).

llama.cpp has one process-wide log callback (``llama_log_set``, which also routes
ggml's messages). Importing ``llama_cpp`` installs llama-cpp-python's own, which prints
everything to stderr; the functions here replace it. The mtmd (multimodal) library has a
callback of its own, set alongside when available.
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import llama_cpp


@llama_cpp.llama_log_callback
def _discard(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    return None


@llama_cpp.llama_log_callback
def _to_stderr(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    sys.stderr.write(text.decode("utf-8", errors="replace"))


def _set(callback) -> None:
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:  # mtmd keeps its own logger; older wheels do not ship the library
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    except (ImportError, OSError, AttributeError):
        pass


def set_llama_logging(verbose: bool) -> None:
    """Print llama.cpp's log to stderr when ``verbose``, else drop it."""
    _set(_to_stderr if verbose else _discard)


@contextmanager
def capture_llama_log(on_text: Callable[[str], None] | None = None,
                      verbose: bool = False) -> Iterator[list[str]]:
    """Collect llama.cpp's log lines while the block runs (and pass each to ``on_text``).

    Yields the list the lines are appended to. On exit, logging goes back to silent
    (or to stderr when ``verbose``).
    """
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        decoded = text.decode("utf-8", errors="replace")
        lines.append(decoded)
        if verbose:
            sys.stderr.write(decoded)
        if on_text is not None:
            try:
                on_text(decoded)
            except Exception:  # an exception cannot cross the C boundary; never let it
                pass

    _set(collect)
    try:
        yield lines
    finally:
        set_llama_logging(verbose)


def last_error(lines: list[str], n: int = 3) -> str:
    """The last few non-empty log lines, joined on one line (for error messages)."""
    kept = [line.strip() for line in lines if line.strip()]
    return " | ".join(kept[-n:])
