"""runtimes/frame_source.py: the newest frame from a camera / file / folder, or every frame.

The video is written here with OpenCV (MJPG in an .avi) and each frame carries its own
index as 8 big black/white squares (robust to JPEG), above a pure red band (BGR
(0, 0, 255)) that checks the RGB order. There is no camera on this machine: the camera
path runs against a stand-in capture (see ``FakeCamera``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from llava_edge.errors import FrameSourceError, MissingExtraError
from llava_edge.runtimes.frame_source import Frame, FrameSource, open_source

cv2 = pytest.importorskip("cv2")

FPS = 20
N = 40  # a 2 s clip
W, H = 128, 64
BITS = 8


def encode(i: int) -> np.ndarray:
    """A BGR frame: the top half is ``i`` in binary as 8 squares of 16 x 32, white for 1;
    the bottom half is pure red."""
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if i >> b & 1:
            img[: H // 2, b * 16:(b + 1) * 16] = 255
    img[H // 2:] = (0, 0, 255)
    return img


def decode(rgb: np.ndarray) -> int:
    """The index drawn by ``encode`` back from an RGB frame; checks the red band too."""
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    band = rgb[H // 2 + 4:, :].reshape(-1, 3).mean(axis=0)
    assert band[0] > 200 and band[1] < 60 and band[2] < 60, f"not red in RGB: {band}"
    top = rgb[4: H // 2 - 4]
    return sum(1 << b for b in range(BITS) if top[:, b * 16 + 4:(b + 1) * 16 - 4].mean() > 128)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert writer.isOpened()
    for i in range(N):
        writer.write(encode(i))
    writer.release()
    return path


COLOURS = [(i * 25, 255 - i * 25, (i * 70) % 256) for i in range(10)]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "shots"
    d.mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (32, 24), colour).save(d / f"img_{i:02d}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def check_counts(src: FrameSource, total: int) -> None:
    s = src.stats
    assert s.read == total and s.read == s.taken + s.dropped, s


# -- video file ---------------------------------------------------------------------------

def test_video_lockstep_gives_every_frame_in_order(video):
    with FrameSource(video, realtime=False) as src:
        assert src.kind == "video" and not src.live
        frames = list(src)
        assert src.ended
    assert [f.index for f in frames] == list(range(N))
    assert [decode(f.image) for f in frames] == list(range(N))
    assert all(f.source == str(video) and f.name == f"frame {f.index}" for f in frames)
    check_counts(src, N)
    assert src.stats.dropped == 0


def test_video_realtime_slow_consumer_gets_the_newest_frame(video):
    src = FrameSource(video)
    assert src.live
    taken = []
    with src:
        t0 = time.monotonic()
        while (f := src.next(timeout=5)) is not None:
            taken.append((time.monotonic() - t0, f))
            assert decode(f.image) == f.index  # the image and its index belong together
            time.sleep(0.3)
    indices = [f.index for _, f in taken]
    assert all(a < b for a, b in zip(indices, indices[1:])), indices
    assert 4 <= len(taken) <= 15, indices
    assert max(b - a for a, b in zip(indices, indices[1:])) > 1
    for elapsed, f in taken[:-1]:  # the last one may be the file's last frame, taken late
        assert elapsed * FPS - 6 <= f.index <= elapsed * FPS + 2, (elapsed, f.index)
    check_counts(src, N)
    assert src.stats.dropped > 0


def test_video_realtime_plays_at_the_file_rate(video):
    t0 = time.monotonic()
    with FrameSource(video) as src:
        frames = list(src)
    took = time.monotonic() - t0
    assert 1.5 <= took <= 4.0, took
    assert len(frames) >= N // 2
    assert frames[-1].index >= N - 3
    check_counts(src, N)


def test_video_max_fps_decodes_fewer_frames(video):
    with FrameSource(video, max_fps=5) as src:
        frames = list(src)
    indices = [f.index for f in frames]
    assert all(b - a >= 3 for a, b in zip(indices, indices[1:])), indices
    assert 5 <= len(frames) <= 11, indices
    assert all(decode(f.image) == f.index for f in frames)
    check_counts(src, N)


@pytest.mark.parametrize("realtime", [False, True])
def test_video_loop_wraps(video, realtime):
    # live at 400 fps so that the test does not wait for three plays at 20 fps
    with FrameSource(video, loop=True, realtime=realtime, fps=400 if realtime else None) as src:
        frames = [src.next(timeout=5) for _ in range(2 * N + 5 if not realtime else 30)]
        while frames[-1].index < 2 * N + 5:
            frames.append(src.next(timeout=5))
    indices = [f.index for f in frames]
    assert all(a < b for a, b in zip(indices, indices[1:]))
    if not realtime:
        assert indices[: 2 * N + 5] == list(range(2 * N + 5))
    assert all(decode(f.image) == f.index % N for f in frames)
    assert not src.ended or src.stats.read > 2 * N


# -- folders and globs --------------------------------------------------------------------

def test_folder_lockstep_order_names_and_rgb(folder):
    src = open_source(folder)
    try:
        assert src.kind == "images" and not src.live
        frames = list(src)
    finally:
        src.close()
    assert [f.name for f in frames] == [f"img_{i:02d}.png" for i in range(10)]
    assert [f.index for f in frames] == list(range(10))
    for f, colour in zip(frames, COLOURS):
        assert f.image.shape == (24, 32, 3) and f.image.dtype == np.uint8
        assert tuple(f.image[0, 0]) == colour
    check_counts(src, 10)


def test_glob_selects_matching_images(folder):
    with FrameSource(str(folder / "img_*[02468].png")) as src:
        names = [f.name for f in src]
    assert names == [f"img_{i:02d}.png" for i in range(0, 10, 2)]


def test_folder_realtime_drops_for_a_slow_consumer(folder):
    with FrameSource(folder, realtime=True, fps=20) as src:
        assert src.live
        frames = []
        while (f := src.next(timeout=5)) is not None:
            frames.append(f)
            time.sleep(0.15)
    indices = [f.index for f in frames]
    assert all(a < b for a, b in zip(indices, indices[1:]))
    assert len(frames) < 10 and src.stats.dropped > 0
    assert all(f.name == f"img_{f.index:02d}.png" for f in frames)
    check_counts(src, 10)


# -- errors -------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(FrameSourceError, match="no such camera, file, folder or URL") as e:
        FrameSource(tmp_path / "nope.mp4")
    assert str(tmp_path / "nope.mp4") in str(e.value)


def test_empty_folder(tmp_path):
    with pytest.raises(FrameSourceError, match="no image files") as e:
        FrameSource(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_glob_without_match(tmp_path):
    pattern = str(tmp_path / "*.png")
    with pytest.raises(FrameSourceError, match="no image files match") as e:
        FrameSource(pattern)
    assert pattern in str(e.value)


def test_file_that_is_not_a_video(tmp_path):
    path = tmp_path / "readme.txt"
    path.write_text("hello")
    src = FrameSource(path)
    with pytest.raises(FrameSourceError, match="OpenCV could not open it") as e:
        src.start()
    assert str(path) in str(e.value)


def test_camera_that_does_not_exist():
    t0 = time.monotonic()
    with pytest.raises(FrameSourceError, match="camera 99") as e:
        FrameSource(99, open_timeout_s=2).start()
    assert "could not open" in str(e.value)
    assert time.monotonic() - t0 < 5


def test_without_opencv(monkeypatch, folder, video):
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cv2" else real(name, *a))
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails
    with pytest.raises(MissingExtraError, match=r"\[video\]") as e:
        FrameSource(video).start()
    assert str(video) in str(e.value)
    with FrameSource(folder) as src:  # folders need Pillow only
        assert len(list(src)) == 10


# -- the camera path, with a stand-in device ----------------------------------------------

class FakeCamera:
    """A STAND-IN for ``cv2.VideoCapture`` on a camera (this machine has none): gives
    ``frames`` generated frames at ``rate`` per second from grab()/retrieve()/read(), each
    showing its number, then fails every read, as an unplugged camera does."""

    rate = 100.0
    frames = 60

    def __init__(self, target, *args):
        self.target, self.n, self.t0, self.released = target, 0, time.monotonic(), False
        self.grabs = 0

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def set(self, prop, value):
        return False

    def grab(self):
        self.grabs += 1
        if self.n >= self.frames:
            return False
        time.sleep(max(0.0, self.t0 + self.n / self.rate - time.monotonic()))
        self.n += 1
        return True

    def retrieve(self):
        return True, encode(self.n - 1)

    def read(self):
        return (self.grab() and self.retrieve()) or (False, None)

    def release(self):
        self.released = True


@pytest.mark.parametrize("source", [0, "1", "rtsp://127.0.0.1:8554/cam"])
def test_camera_stand_in_latest_frame_then_stops(monkeypatch, source):
    made = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: made.append(FakeCamera(*a)) or made[-1])
    src = FrameSource(source)
    assert src.kind == ("url" if "://" in str(source) else "camera") and src.live
    taken = []
    with src:
        assert made[0].target == (source if src.kind == "url" else int(source))
        with pytest.raises(FrameSourceError, match="stopped giving frames") as e:
            while True:
                f = src.next(timeout=5)
                assert f is not None
                taken.append(f)
                assert decode(f.image) == f.index
                time.sleep(0.1)
    label = f"camera {source}" if src.kind == "camera" else source
    assert label in str(e.value)
    indices = [f.index for f in taken]
    assert all(a < b for a, b in zip(indices, indices[1:])) and indices[-1] >= 50, indices
    assert len(taken) < 25  # ~6 s of asking at 0.1 s per frame would be 60: frames were skipped
    check_counts(src, FakeCamera.frames)
    assert made[0].released and made[0].grabs >= FakeCamera.frames + 50


def test_camera_stand_in_max_fps(monkeypatch):
    monkeypatch.setattr(FakeCamera, "frames", 30)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    got = []
    with FrameSource(0, max_fps=20) as src:
        with pytest.raises(FrameSourceError):
            while (f := src.next(timeout=5)) is not None:
                got.append(f.index)
    assert len(got) <= 30 * 20 / 100 + 2, got  # 30 frames in 0.3 s, decoded at <= 20 fps
    check_counts(src, 30)


# -- closing ------------------------------------------------------------------------------

def test_close_from_another_thread_wakes_next(folder):
    src = FrameSource(folder, fps=0.5).start()  # lockstep, one frame every 2 s at most
    assert src.next(timeout=5).index == 0
    with pytest.raises(TimeoutError, match="shots"):
        src.next(timeout=0.1)
    closer = threading.Timer(0.2, src.close)
    closer.start()
    t0 = time.monotonic()
    assert src.next() is None
    assert time.monotonic() - t0 < 1.5
    closer.join()  # close() returns once the reader thread is gone
    assert not src._thread.is_alive() and src.ended
    src.close()  # again: nothing happens
    assert src.next() is None


def test_close_while_the_lockstep_reader_waits(video):
    src = FrameSource(video, realtime=False).start()
    first = src.next(timeout=5)
    assert isinstance(first, Frame) and first.index == 0
    time.sleep(0.2)  # the reader has put frame 1 and waits on frame 2
    src.close()
    assert not src._thread.is_alive() and src.ended and src.next() is None
    s = src.stats  # the frame left in the slot counts as dropped
    assert s.read <= 3 and s.taken == 1 and s.read == s.taken + s.dropped, s
