"""Write a folder, or a file, so that it appears complete or not at all."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_dir(out: str | Path, fill: Callable[[Path], T]) -> T:
    """Call ``fill(tmp)`` on a temporary sibling of ``out``, then rename it to ``out``
    (replacing what was there) and return what ``fill`` returned. An exception or Ctrl-C
    leaves ``out`` as it was and no temporary folder behind. Whether ``out`` may be
    replaced is the caller's check; ``fill`` may repeat it at its end, for whatever
    appeared while it worked."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; results are meant to be read by others
    try:
        result = fill(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


@contextmanager
def atomic_path(out: str | Path, *, mode: int | None = None,
                suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` (a name that does not exist yet) for the block
    to write by any means (a library, a subprocess), then rename it to ``out``: a reader
    sees the old file or the whole new one, never a part. An exception or Ctrl-C leaves
    ``out`` as it was and no temporary file behind. ``mode``: given to the file before
    the rename (None: as its writer created it); ``suffix`` ends the temporary name, for
    writers that go by it (``.tmp.png``)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file_atomic(out: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``out`` through :func:`atomic_path`: a reader sees the old file
    or the whole new one, never a part."""
    out = Path(out)
    with atomic_path(out, mode=mode) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return out


def write_json(out: str | Path, obj: object, *, default: Callable | None = None,
               ensure_ascii: bool = True) -> Path:
    """Write ``obj`` as JSON (indent 2, a final newline) with :func:`write_file_atomic`;
    ``default`` and ``ensure_ascii`` as in :func:`json.dumps`."""
    text = json.dumps(obj, indent=2, default=default, ensure_ascii=ensure_ascii) + "\n"
    return write_file_atomic(out, text.encode("utf-8"))


def _replace(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; ``out`` is never half old, half new."""
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        # Move the old folder aside first, and put it back if the rename fails.
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(trash / out.name, out)
            trash.rmdir()
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return
    os.replace(tmp, out)
