"""``atomic_dir``: a folder (``write_dir``) or a file (``atomic_path``, ``write_file_atomic``,
``write_json``) appears complete or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava_edge.atomic_dir import atomic_path, write_dir, write_file_atomic, write_json


def _fill(text: str):
    def fill(tmp: Path) -> None:
        (tmp / "a.txt").write_text(text)
    return fill


def test_writes_a_new_folder_and_replaces_an_old_one(tmp_path):
    out = tmp_path / "out"
    write_dir(out, _fill("one"))
    (out / "stale.txt").write_text("from the first run")
    write_dir(out, _fill("two"))
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert (out / "a.txt").read_text() == "two"
    assert out.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    assert write_dir(out, lambda tmp: len(str(tmp))) > 0  # what fill returns comes back


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_fill_keeps_the_old_folder_and_leaves_nothing_behind(tmp_path, error):
    out = tmp_path / "out"
    write_dir(out, _fill("old"))

    def fail(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise error

    with pytest.raises(type(error)):
        write_dir(out, fail)
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_or_link_in_the_way_is_replaced(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    write_dir(link, _fill("x"))
    assert not link.is_symlink() and (link / "a.txt").read_text() == "x"
    assert list(target.iterdir()) == []  # the link's target was not touched
    plain = tmp_path / "plain"
    plain.write_text("a file")
    write_dir(plain, _fill("y"))
    assert (plain / "a.txt").read_text() == "y"


def test_atomic_path_renames_what_any_writer_wrote(tmp_path):
    out = tmp_path / "out.bin"
    out.write_text("old")
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()  # the writer creates it
        subprocess.run([sys.executable, "-c",
                        f"open({str(tmp)!r}, 'w').write('written by another process')"],
                       check=True)
        assert out.read_text() == "old"  # nothing under the final name until the end
    assert out.read_text() == "written by another process"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path, error):
    out = tmp_path / "out.bin"
    out.write_text("old")
    with pytest.raises(type(error)):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise error
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_mode_and_suffix(tmp_path):
    out = tmp_path / "curve.png"
    with atomic_path(out, mode=0o640, suffix=".tmp.png") as tmp:
        assert tmp.name.startswith(".curve.png.") and tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"png")
        tmp.chmod(0o600)
    assert out.stat().st_mode & 0o777 == 0o640
    with atomic_path(out) as tmp:  # no mode: the writer's stays
        tmp.write_bytes(b"png")
        tmp.chmod(0o600)
    assert out.stat().st_mode & 0o777 == 0o600


def test_write_file_atomic_and_write_json(tmp_path):
    out = tmp_path / "a.json"
    write_file_atomic(out, b"old", mode=0o600)
    assert out.read_bytes() == b"old" and out.stat().st_mode & 0o777 == 0o600
    assert write_json(out, {"b": [1, 2], "p": tmp_path}, default=str) == out
    assert out.read_text() == json.dumps({"b": [1, 2], "p": str(tmp_path)}, indent=2) + "\n"
    assert out.stat().st_mode & 0o777 == 0o644
    write_json(out, {"t": "é"}, ensure_ascii=False)
    assert out.read_text(encoding="utf-8") == '{\n  "t": "é"\n}\n'
    with pytest.raises(TypeError):  # not serializable: the old file stays
        write_json(out, {"x": object()})
    assert json.loads(out.read_text(encoding="utf-8")) == {"t": "é"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_file_atomic_fails_cleanly_without_its_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_file_atomic(tmp_path / "missing" / "a.bin", b"x")
    assert list(tmp_path.iterdir()) == []
