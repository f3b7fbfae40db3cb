"""Write a folder so that it appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp)`` on a temporary sibling of ``out``, then rename it to ``out``
    (replacing what was there). An exception or Ctrl-C leaves ``out`` as it was and no
    temporary folder behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; results are meant to be read by others
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
