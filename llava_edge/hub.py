"""Model arguments: a local directory, or a Hugging Face Hub repo id to download.

Every command that takes a model (``export MODEL``, ``init --vision/--llm``,
``train --model``, ``convert``) goes through :func:`resolve_model`, so they all accept the
same things and fail the same way:

* an existing local directory is used as it is (it wins over a Hub id of the same name);
* ``org/name`` or ``org/name@revision`` is downloaded with ``huggingface_hub`` into its
  usual cache (``HF_HOME``), or taken from that cache when offline;
* anything else is a missing directory.

Offline means ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value, read
when the function is called rather than when huggingface_hub was imported, or a download
that cannot connect. Either way the error names the id and how to fetch it by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llava_edge.errors import LlavaEdgeError

# huggingface_hub's own rule for repo ids: "name" or "namespace/name" of letters, digits,
# "-", "_", "." (no "--" or ".." and no leading/trailing "-" or "."). A model argument
# needs the namespace, so that a mistyped local folder name ("ckpt") is never looked up.
_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[\w.-]{0,95}[A-Za-z0-9_]"
                      r"(@[\w./-]+)?$")


class ModelNotFoundError(LlavaEdgeError):
    """A model argument that is neither a local directory nor a downloadable Hub id."""


def parse_repo_id(value: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``value`` looks like a Hub id (``org/name[@rev]``),
    else None."""
    if not _REPO_ID.match(value):
        return None
    repo_id, _, revision = value.partition("@")
    return repo_id, revision or None


def hub_offline() -> bool:
    """Whether huggingface_hub is told to stay offline (its own environment variables and
    notion of "true", read now: tests and users may set them after import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in constants.ENV_VARS_TRUE_VALUES


def resolve_model(path_or_id: str | os.PathLike, what: str) -> Path:
    """The local directory for a model argument (see the module docstring).

    ``what`` names the argument in errors (``"--vision"``, ``"MODEL"``). Raises
    :class:`ModelNotFoundError` for a missing path, a file, or a Hub id that cannot be
    had; the message says how to download it by hand.
    """
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{what} {text}: not a directory")
    parsed = parse_repo_id(text)
    if parsed is None:
        raise ModelNotFoundError(f"{what} {text}: no such directory")
    return _download(*parsed, text=text, what=what)


def _download(repo_id: str, revision: str | None, *, text: str, what: str) -> Path:
    import huggingface_hub
    from huggingface_hub import errors

    by_hand = (f"download it with `huggingface-cli download {repo_id}"
               f"{f' --revision {revision}' if revision else ''}` "
               "(or `hf download`) where there is a network, or pass a local directory")
    offline = hub_offline()
    try:
        # Offline, huggingface_hub answers from its cache without a connection.
        local = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                  local_files_only=offline)
    except errors.LocalEntryNotFoundError:
        why = ("offline (HF_HUB_OFFLINE is set) and not in the Hugging Face cache"
               if offline else "the Hub could not be reached and it is not in the cache")
        raise ModelNotFoundError(f"{what} {text}: no such directory; as a Hub id it is {why}; "
                                 f"{by_hand}") from None
    except errors.GatedRepoError:
        raise ModelNotFoundError(f"{what} {text}: the Hub repository {repo_id} is gated; accept "
                                 "its terms on huggingface.co and log in (`hf auth login`), "
                                 f"or {by_hand}") from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"{what} {text}: no such directory, and no Hub repository "
                                 f"{repo_id} (or it is private: log in with `hf auth login`)"
                                 ) from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{what} {text}: the Hub repository {repo_id} has no "
                                 f"revision {revision!r}") from None
    except Exception as e:
        if not _is_connection_error(e):
            raise
        raise ModelNotFoundError(f"{what} {text}: no such directory, and downloading it from "
                                 f"the Hub failed ({type(e).__name__}: {e}); {by_hand}") from None
    return Path(local)


def _is_connection_error(e: BaseException) -> bool:
    """A failure to talk to the Hub (refused, DNS, proxy, TLS, timeout, HTTP 5xx), as
    opposed to a bug. huggingface_hub turns most of these into LocalEntryNotFoundError;
    the rest surface as its HfHubHTTPError, OSError, or the HTTP client's own transport
    errors (matched by name: the client library has changed between releases)."""
    from huggingface_hub import errors

    if isinstance(e, (errors.HfHubHTTPError, OSError)):
        return True
    names = {cls.__name__ for cls in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectError", "ProxyError", "TimeoutException",
                         "ConnectionError", "Timeout"})
