"""Cancellation: a request's :class:`Cancel` stops it inside the vision graph (ONNX
Runtime's ``terminate``), inside a prefill (llama.cpp's abort callback, within one ubatch)
or between tokens; the KV cache and the prefix bookkeeping stay consistent, so the next
request answers token for token as a fresh model does.

The prompts are long (~3,500 positions, ubatches of 16) so that a prefill spans hundreds
of ubatches. Assertions are on positions evaluated (``llm.n_past``) and counters; where a
time bound guards the test, it is generous.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from llava_edge.errors import Cancelled
from llava_edge.runtimes.cancel import Cancel
from llava_edge.runtimes.pipeline import LlavaEdge
from scene_images import scene

N_UBATCH = 16
LOAD = dict(vision_precision="fp32", llm_quant="F16", n_threads=1, n_ctx=4096,
            n_batch=2048, n_ubatch=N_UBATCH)  # one llama_decode per 2,048 positions


def long_prompt(tag: str, words: int = 900) -> str:
    """~3,500 positions with the tiny tokenizer; ``tag`` first, so that two prompts with
    different tags share no prefix."""
    return tag + " " + " ".join(f"word{i}" for i in range(words))


class CancelAtPoll(Cancel):
    """A Cancel that another thread sets exactly when llama.cpp's abort callback has
    polled it ``n`` times, i.e. in the middle of a llama_decode call: deterministic,
    where a timer would race the prefill."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.polls = n, 0
        self.reached = threading.Event()
        self.canceller = threading.Thread(target=self._cancel_when_reached, daemon=True)
        self.canceller.start()

    def _cancel_when_reached(self) -> None:
        if self.reached.wait(120):
            self.cancel("test")

    @property
    def cancelled(self) -> bool:
        self.polls += 1
        if self.polls == self.n:
            self.reached.set()
            self.wait(30)  # the other thread cancels while llama_decode waits on us
        return super().cancelled


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, **LOAD) as m:
        yield m


@pytest.fixture(scope="module")
def ref(tiny_bundle):
    """A model that never sees a cancelled request, nor reuses anything."""
    with LlavaEdge.load(tiny_bundle, reuse_prefix=False, embed_cache_size=0, **LOAD) as m:
        yield m


def assert_like_fresh(model, ref, prompt: str):
    """The greedy answer to ``prompt`` and the logits of its last position are those of
    the fresh model (the tiny model's greedy tokens repeat a lot: the logits tell more;
    1e-3: positions evaluated in batches of other sizes round differently)."""
    answer = model.ask(scene(1), prompt, max_new_tokens=6)
    expected = ref.ask(scene(1), prompt, max_new_tokens=6)
    assert answer.tokens == expected.tokens and answer.stop_reason == expected.stop_reason
    np.testing.assert_allclose(model.llm.logits(), ref.llm.logits(), rtol=0, atol=1e-3)
    return answer


@pytest.mark.parametrize("reuse", [True, False])
def test_cancel_mid_prefill_keeps_the_finished_ubatches(model, ref, reuse):
    model.reuse_prefix = reuse
    model.clear_cache()
    prompt = long_prompt("a" if reuse else "b")
    cancel = CancelAtPoll(2000)  # ~20 ubatches into the long text's llama_decode
    with pytest.raises(Cancelled) as e:
        model.ask(scene(1), prompt, max_new_tokens=6, cancel=cancel)
    assert e.value.reason == "test"
    ids = model.prompt_ids(prompt, 1)
    n_prompt = len(ids) - 1 + model.n_image_tokens
    text_start = ids.index(model.image_token_id) + model.n_image_tokens  # the long text
    held = model.llm.n_past
    # Stopped well before the end; llama.cpp kept the ubatches it had finished and rolled
    # back the one it was in. The prompt (text rows, image, long text) is one batch of
    # embeddings (LlamaCppLM.eval_prompt), so its ubatches start at position 0.
    assert text_start < held < n_prompt // 4 and held % N_UBATCH == 0
    assert len(model._kv) == held  # the prefix bookkeeping agrees with the cache
    try:
        answer = assert_like_fresh(model, ref, prompt)
    finally:
        model.reuse_prefix = True
    assert answer.timings.reused_tokens == (held if reuse else 0)


def test_stream_cancelled_from_another_thread_during_prefill(model, ref):
    """A plain cancel from a timer thread: the stream ends with Cancelled, its answer
    says "cancelled", and the next request is right."""
    model.clear_cache()
    cancel = Cancel()
    stream = model.stream(scene(1), long_prompt("c"), max_new_tokens=6, cancel=cancel)
    timer = threading.Timer(0.2, cancel.cancel, ("timeout",))
    timer.start()
    with pytest.raises(Cancelled):
        for _ in stream:
            pass
    timer.join()
    assert stream.answer.stop_reason == "cancelled" and stream.answer.tokens == []
    assert model.llm.n_past < stream.answer.n_prompt_tokens
    assert_like_fresh(model, ref, long_prompt("c"))


def test_cancel_during_decode_stops_within_a_token(model, ref):
    cancel = Cancel()
    # sampled: the tiny model's greedy answer repeats a token that renders as nothing
    stream = model.stream(scene(1), "Tell me a story.", max_new_tokens=50, temperature=1.0,
                          seed=3, cancel=cancel)
    pieces = 0
    with pytest.raises(Cancelled):
        for _ in stream:
            pieces += 1
            if pieces == 2:
                threading.Thread(target=cancel.cancel, args=("disconnect",)).start()
                cancel.wait(30)
    assert stream.answer.stop_reason == "cancelled"
    assert stream.answer.n_tokens <= pieces + 2  # pieces may hold back a token or two
    assert_like_fresh(model, ref, long_prompt("a"))


def test_onnx_runtime_run_is_terminated_mid_call(model):
    views = np.zeros((4096, 3, 64, 64), np.float32)  # seconds of work for the tiny tower
    cancel = Cancel()
    model.vision.cancel = cancel
    try:
        threading.Timer(0.1, cancel.cancel, ("timeout",)).start()
        with pytest.raises(Cancelled):
            model.vision.encode(views)
    finally:
        model.vision.cancel = None
    assert model.vision.encode(views[:2]).shape[0] == 2  # the session still works


def test_cancel_during_the_vision_call(tiny_next_bundle):
    """Cancelled from another thread while the pipeline's vision call runs (the session
    is wrapped so that the cancel lands inside ``run``); the next request is fine."""
    with LlavaEdge.load(tiny_next_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as m, \
            LlavaEdge.load(tiny_next_bundle, vision_precision="fp32", llm_quant="F16",
                           n_threads=1) as ref:
        image = scene(2).resize((192, 64))  # tiles
        expected = ref.ask(image, "What is it?", max_new_tokens=5).tokens
        cancel = Cancel()
        real = m.vision.session

        class Session:
            def __getattr__(self, name):
                return getattr(real, name)

            def run(self, outputs, feeds, options=None):
                t = threading.Thread(target=cancel.cancel, args=("disconnect",))
                t.start()
                t.join()
                return real.run(outputs, feeds, options)

        m.vision.session = Session()
        try:
            with pytest.raises(Cancelled):
                m.ask(image, "What is it?", max_new_tokens=5, cancel=cancel)
        finally:
            m.vision.session = real
        assert m.llm.n_past == 0 and len(m.embed_cache) == 0  # nothing half-done kept
        assert m.ask(image, "What is it?", max_new_tokens=5).tokens == expected


# -- the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_bundle):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from llava_edge.runtimes.serve.app import ServeConfig, create_app
    from uvicorn_thread import serving
    from llava_edge.runtimes.serve.worker import Worker

    worker = Worker(LlavaEdge.load(tiny_bundle, **LOAD), max_queue=4).start()
    config = ServeConfig(model_name="tiny", timeout_s=300.0)
    with serving(create_app(worker, config)) as port:
        yield port, worker, config
    worker.close()


def _body(prompt: str, max_tokens: int = 4) -> bytes:
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()


def _post(port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _wait(worker, pred, what: str):
    for _ in range(2400):
        s = worker.stats()
        if pred(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"never reached: {what}; last: {s}")


def _n_prompt(worker, prompt: str) -> int:
    return len(worker.model.messages_ids([{"role": "user", "content": prompt}], 0))


def test_server_timeout_stops_the_prefill(server):
    port, worker, config = server
    before = worker.stats()
    prompt = long_prompt("timeout")
    config.timeout_s = 0.5
    try:
        status, body = _post(port, _body(prompt))
    finally:
        config.timeout_s = 300.0
    assert status == 504 and body["error"]["code"] == "timeout"
    after = _wait(worker, lambda s: s.timed_out == before.timed_out + 1 and not s.busy,
                  "the job timed out")
    assert after.completed == before.completed and after.failed == before.failed
    assert worker.model.llm.n_past < _n_prompt(worker, prompt)  # cut mid-prefill
    status, body = _post(port, _body("hello"))
    assert status == 200 and body["usage"]["completion_tokens"] >= 1
    assert worker.stats().completed == before.completed + 1


def test_server_client_disconnect_stops_the_prefill(server):
    port, worker, _ = server
    before = worker.stats()
    prompt = long_prompt("disconnect")
    body = _body(prompt)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head + body)
        _wait(worker, lambda st: st.busy, "the job started")
    after = _wait(worker, lambda s: s.cancelled == before.cancelled + 1 and not s.busy,
                  "the job cancelled")
    assert after.completed == before.completed and after.accepted == before.accepted + 1
    assert worker.model.llm.n_past < _n_prompt(worker, prompt)  # cut mid-prefill
    status, reply = _post(port, _body("hello"))
    assert status == 200 and reply["usage"]["completion_tokens"] >= 1


# -- Ctrl-C ----------------------------------------------------------------------------------

def _pipes(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_llava_edge_run_mid_prefill(tiny_bundle):
    """SIGINT while `llava-edge run` prefills ~7,800 positions (~7 s on one core here):
    exit 130 within a few seconds. The request has begun once the process opens the
    pipe of its Ctrl-C watcher (stdout and stderr are the only pipes before)."""
    prompt = long_prompt("sigint", words=1750)
    proc = subprocess.Popen([sys.executable, "-m", "llava_edge", "run", str(tiny_bundle),
                             "--prompt", prompt, "--n-ctx", "8192", "--threads", "1",
                             "--llm-quant", "F16", "--max-new-tokens", "4"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2400):
            if proc.poll() is not None or _pipes(proc.pid) > 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)  # into the prefill
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted." in err
    assert elapsed < 5.0, elapsed  # the whole prefill takes longer (~7 s here, unloaded)
