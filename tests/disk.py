"""Disk-space precondition for the tests that write 7B-sized files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def require_free_disk(path: Path, gib: float, what: str) -> None:
    """Skip (with the figures) when the filesystem holding ``path`` has less than ``gib`` free:
    a full disk midway would fail the test for a reason that is not the code's."""
    free = shutil.disk_usage(path).free / 2**30
    if free < gib:
        pytest.skip(f"{what} needs {gib:.0f} GiB free under {path}, {free:.1f} GiB there")
