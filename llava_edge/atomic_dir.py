"""Write a folder, or a file, so that it appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
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


def write_file_atomic(out: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to a temporary sibling of ``out``, then rename it to ``out``: a
    reader sees the old file or the whole new one, never a part (an exception or Ctrl-C
    leaves no temporary file behind)."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # mkstemp makes it private; results are meant to be read
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


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
