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


class BundleError(LlavaEdgeError):
    """A bundle directory that is incomplete, altered or inconsistent."""
