"""Errors the user can act on.

Anything raised as :class:`LlavaEdgeError` (or a subclass) is the user's to fix: a bad
path, a corrupt file, an unsupported model. The CLI prints its message on one line and
exits 1. Every other exception is a bug in llava-edge and exits 2.
"""

from __future__ import annotations


class LlavaEdgeError(Exception):
    """A problem with the user's input, files or environment (CLI exit code 1)."""


class MissingExtraError(LlavaEdgeError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, what: str, missing: str):
        super().__init__(
            f"{what} needs the [{extra}] extra ({missing} is not installed): "
            f"pip install 'llava-edge[{extra}]'"
        )


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every module in ``modules`` imports."""
    import importlib.util

    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(extra, what, name)


class ImageError(LlavaEdgeError):
    """An image that cannot be used: unreadable, corrupt, empty, too large, wrong shape."""


class PromptError(LlavaEdgeError):
    """A prompt that cannot be answered: empty, too long for the context, or with a
    number of ``<image>`` markers that does not match the images given."""


class SamplingError(LlavaEdgeError, ValueError):
    """A sampling option out of its range (temperature, top_k, top_p, repeat_penalty).

    Also a ``ValueError``, as a bad argument is. ``option`` is the name the caller used
    (``top_p`` in Python, ``--top-p`` on the command line), ``requirement`` the range it
    must be in, so that each interface can name the option its own way."""

    def __init__(self, option: str, value: object, requirement: str):
        super().__init__(f"{option} must be {requirement}, got {value}")
        self.option, self.value, self.requirement = option, value, requirement


class BundleError(LlavaEdgeError):
    """A bundle directory that is incomplete, altered or inconsistent."""


class FrameSourceError(LlavaEdgeError):
    """A frame source (camera, video file, stream URL, folder, glob) that cannot be opened
    or read; the message names the source."""


class StructuredOutputError(LlavaEdgeError, ValueError):
    """A JSON schema or a list of choices that cannot constrain decoding (unsupported or
    malformed), or a constrained answer that did not complete (cut at max_new_tokens)."""


class RemoteFetchError(LlavaEdgeError):
    """A remote image URL that was refused or could not be fetched (a refused address or
    redirect, too large, too slow, not an image); the message names the URL and why."""


class Cancelled(LlavaEdgeError):
    """A request stopped by its :class:`~llava_edge.runtimes.cancel.Cancel` signal (a
    timeout, a client that went away, Ctrl-C); ``reason`` says which. The model stays
    usable: the next request is answered as if this one had not run."""

    def __init__(self, reason: str = "cancelled"):
        super().__init__(f"the request was cancelled ({reason})")
        self.reason = reason
