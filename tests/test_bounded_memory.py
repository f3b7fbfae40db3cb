"""Bounded memory: the embedding cache in bytes as well as entries, and the server's queue
in requests and in the decoded image bytes of waiting and running requests, both shown
by ``/health``. The server is a real uvicorn on 127.0.0.1 serving the tiny bundle; its
worker's test hooks (``pause``, ``hold_tokens``) make "busy" deterministic."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from llava_edge.runtimes.embed_cache import EmbeddingCache  # noqa: E402
from llava_edge.runtimes.pipeline import LlavaEdge  # noqa: E402
from llava_edge.runtimes.serve.app import ServeConfig, create_app  # noqa: E402
from llava_edge.runtimes.serve.worker import Worker  # noqa: E402
from scene_images import scene  # noqa: E402
from uvicorn_thread import serving  # noqa: E402
from test_serve import (API_KEY, MAX_BODY, MAX_PIXELS, MODEL, Served,  # noqa: E402
                        _assert_openai_error, _data_url, _png, _user)

# -- the embedding cache --------------------------------------------------------------------


def _floats(n: int, v: float = 1.0) -> np.ndarray:
    return np.full(n, v, np.float32)  # 4 bytes a value


def test_cache_evicts_least_recently_used_until_the_byte_bound_holds():
    cache = EmbeddingCache(capacity=10, max_bytes=1000)
    cache.put(b"a", _floats(100))  # 400 bytes
    cache.put(b"b", _floats(100))
    assert cache.nbytes == 800 and len(cache) == 2
    assert cache.get(b"a") is not None  # a is now more recent than b
    cache.put(b"c", _floats(100))  # 1200 > 1000: b goes
    assert cache.get(b"b") is None and cache.nbytes == 800
    assert cache.get(b"a") is not None and cache.get(b"c") is not None  # order: a, c
    cache.put(b"d", _floats(150))  # 600 bytes: 1400, so a (the oldest) goes, c stays
    assert cache.get(b"a") is None
    assert cache.get(b"c") is not None and cache.get(b"d") is not None
    assert cache.nbytes == 1000 and len(cache) == 2
    assert cache.evictions == 2


def test_an_entry_over_the_byte_bound_is_not_cached_and_evicts_nothing():
    cache = EmbeddingCache(capacity=10, max_bytes=1000)
    cache.put(b"a", _floats(100))
    cache.put(b"big", _floats(251))  # 1004 bytes
    assert cache.get(b"big") is None
    assert cache.get(b"a") is not None and cache.nbytes == 400 and cache.evictions == 0
    off = EmbeddingCache(capacity=10, max_bytes=0)
    off.put(b"a", _floats(1))
    assert len(off) == 0 and off.nbytes == 0


def test_cache_replacing_a_key_and_the_count_bound_keep_bytes_right():
    cache = EmbeddingCache(capacity=2, max_bytes=None)
    cache.put(b"a", _floats(100))
    cache.put(b"a", _floats(10, 2.0))  # replaced: 40 bytes, not 440
    assert cache.nbytes == 40 and float(cache.get(b"a")[0]) == 2.0
    cache.put(b"b", _floats(10))
    cache.put(b"c", _floats(10))  # 3 > capacity 2: a goes
    assert cache.get(b"a") is None and len(cache) == 2 and cache.nbytes == 80
    s = cache.stats()
    assert s == {"entries": 2, "bytes": 80, "max_entries": 2, "max_bytes": None,
                 "hits": 1, "misses": 1, "evictions": 1}
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0
    with pytest.raises(ValueError):
        EmbeddingCache(2, max_bytes=-1)


def test_a_byte_bounded_cache_changes_no_answer(tiny_bundle):
    """Room for one image's embeddings: asking about A, B, A, B evicts each time; the
    greedy answers equal those of a model with no cache."""
    questions = [(scene(1), "What colour is the square?"), (scene(2), "Where is it?"),
                 (scene(1), "Describe the image."), (scene(2), "What colour is it?")]
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1, embed_cache_size=0) as plain:
        expected = [plain.ask(img, q, max_new_tokens=8).text for img, q in questions]
        assert len(plain.embed_cache) == 0
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        assert model.embed_cache.max_bytes == 256 * 1024 * 1024  # the default
        model.ask(scene(3), "hi", max_new_tokens=1)
        one = model.embed_cache.nbytes  # one image's embeddings
        assert one > 0
        model.embed_cache = EmbeddingCache(16, max_bytes=one * 3 // 2)
        got = [model.ask(img, q, max_new_tokens=8) for img, q in questions]
        assert [a.text for a in got] == expected
        assert [a.timings.images_encoded for a in got] == [1, 1, 1, 1]
        assert len(model.embed_cache) == 1 and model.embed_cache.nbytes == one
        assert model.embed_cache.evictions == 3


def test_load_takes_embed_cache_mb(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1, embed_cache_size=4, embed_cache_mb=0.5) as model:
        s = model.embed_cache.stats()
        assert s["max_entries"] == 4 and s["max_bytes"] == 512 * 1024
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1, embed_cache_mb=None) as model:
        assert model.embed_cache.max_bytes is None


# -- the server -----------------------------------------------------------------------------

IMG_BYTES = 80 * 64 * 3  # one scene() image, decoded
MAX_IMAGE_BYTES = IMG_BYTES * 3 // 2  # room for one such image, not two
CACHE_MB = 1.0


@pytest.fixture(scope="module")
def server(tiny_bundle):
    model = LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                           n_threads=1, max_pixels=MAX_PIXELS, embed_cache_mb=CACHE_MB)
    # max_queue=4: the count bound is never what refuses a request here
    worker = Worker(model, max_queue=4, max_image_bytes=MAX_IMAGE_BYTES).start()
    config = ServeConfig(model_name=MODEL, api_key=API_KEY, max_body_bytes=MAX_BODY,
                         timeout_s=300.0, max_pixels=MAX_PIXELS)
    with serving(create_app(worker, config)) as port:
        yield Served(port, worker, config)
    worker.close()


def _body(seed: int, max_tokens: int = 4, **extra) -> dict:
    return {"model": MODEL, "messages": [_user(_data_url(_png(scene(seed))))],
            "max_tokens": max_tokens, "temperature": 0, **extra}


def _idle(h: dict) -> bool:
    return not h["busy"] and h["queue_depth"] == 0


def test_health_reports_the_bounds_and_bytes_return_to_zero(server):
    status, _, body = server.request("POST", "/v1/chat/completions", _body(20))
    assert status == 200 and body["usage"]["completion_tokens"] >= 1
    h = server.wait_health(_idle, "idle")
    assert h["queue_image_bytes"] == 0 and h["max_queue_image_bytes"] == MAX_IMAGE_BYTES
    assert h["max_queue"] == 4
    c = h["embed_cache"]
    assert c["entries"] >= 1 and c["bytes"] > 0
    assert c["max_entries"] == 16 and c["max_bytes"] == int(CACHE_MB * 1024 * 1024)
    assert c["bytes"] == server.worker.model.embed_cache.nbytes
    assert set(c) >= {"hits", "misses", "evictions"}


def test_over_the_byte_bound_while_another_runs_gets_429(server):
    before = server.health()
    results = {}
    server.worker.hold_tokens(True)  # the first request cannot finish on its own
    try:
        running = threading.Thread(target=lambda: results.update(
            a=server.request("POST", "/v1/chat/completions", _body(21, max_tokens=20))))
        running.start()
        server.wait_health(lambda h: h["busy"] and h["queue_image_bytes"] == IMG_BYTES,
                           "one request running")
        status, headers, err = server.request("POST", "/v1/chat/completions", _body(22))
        assert status == 429 and int(headers["retry-after"]) >= 1
        _assert_openai_error(err, "queue_full")
        assert err["error"]["type"] == "rate_limit_error"
        h = server.health()  # the refused request holds nothing
        assert h["queue_image_bytes"] == IMG_BYTES and h["queue_depth"] == 0
        assert h["rejected"] == before["rejected"] + 1
    finally:
        server.worker.hold_tokens(False)
    running.join(120)
    assert results["a"][0] == 200
    after = server.wait_health(_idle, "idle")
    assert after["queue_image_bytes"] == 0
    assert after["completed"] == before["completed"] + 1


def test_a_request_over_the_whole_byte_bound_gets_413(server):
    before = server.health()
    big = {"model": MODEL, "messages": [_user(_data_url(_png(scene(23, size=(100, 100)))))],
           "max_tokens": 2}
    status, headers, err = server.request("POST", "/v1/chat/completions", big)
    assert status == 413 and "retry-after" not in headers
    _assert_openai_error(err, "images_too_large")
    assert "--max-queue-image-mb" in err["error"]["message"]
    h = server.health()
    assert h["rejected_too_large"] == before["rejected_too_large"] + 1
    assert h["queue_image_bytes"] == 0 and h["accepted"] == before["accepted"]


def test_bytes_are_released_after_a_timeout_running_or_waiting(server):
    before = server.health()
    server.worker.hold_tokens(True)
    server.config.timeout_s = 1.0
    try:
        status, _, body = server.request("POST", "/v1/chat/completions",
                                         _body(24, max_tokens=50))
    finally:
        server.config.timeout_s = 300.0
        server.worker.hold_tokens(False)
    assert status == 504
    _assert_openai_error(body, "timeout")
    h = server.wait_health(lambda h: h["timed_out"] == before["timed_out"] + 1 and _idle(h),
                           "the running job timed out")
    assert h["queue_image_bytes"] == 0
    # Timed out while waiting: its bytes, like its queue slot, are held until the worker
    # drops it, which it does at once when its turn comes.
    server.worker.pause()
    server.config.timeout_s = 1.0
    try:
        status, _, _ = server.request("POST", "/v1/chat/completions", _body(25))
        assert status == 504
        assert server.health()["queue_image_bytes"] == IMG_BYTES
    finally:
        server.config.timeout_s = 300.0
        server.worker.resume()
    h = server.wait_health(lambda h: h["timed_out"] == before["timed_out"] + 2 and _idle(h),
                           "the waiting job dropped")
    assert h["queue_image_bytes"] == 0 and h["completed"] == before["completed"]


def test_bytes_are_released_after_a_client_disconnect(server):
    before = server.health()
    body = json.dumps(_body(26, max_tokens=500, stream=True)).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    server.worker.hold_tokens(True)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
            s.sendall(head + body)
            received = b""
            while received.count(b"data: ") < 2:  # the role chunk, then the first piece
                data = s.recv(65536)
                assert data, f"server closed the stream early: {received!r}"
                received += data
            assert server.health()["queue_image_bytes"] == IMG_BYTES
        after = server.wait_health(
            lambda h: h["cancelled"] == before["cancelled"] + 1 and _idle(h),
            "the streamed job cancelled")
    finally:
        server.worker.hold_tokens(False)
    assert after["queue_image_bytes"] == 0


def test_bytes_are_released_after_a_failed_request(server):
    before = server.health()
    status, _, err = server.request("POST", "/v1/chat/completions", {
        "model": MODEL, "messages": [_user(_data_url(_png(scene(27))), "red " * 1500)],
        "max_tokens": 2})
    assert status == 400
    _assert_openai_error(err, "context_length_exceeded")
    h = server.wait_health(lambda h: h["failed"] == before["failed"] + 1 and _idle(h),
                           "the job failed")
    assert h["queue_image_bytes"] == 0


def test_serve_command_has_the_options():
    from click.testing import CliRunner

    from llava_edge.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--max-queue-image-mb" in result.output and "--embed-cache-mb" in result.output
