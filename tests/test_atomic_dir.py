"""``atomic_dir.write_dir``: a folder appears complete or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_edge.atomic_dir import write_dir


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
