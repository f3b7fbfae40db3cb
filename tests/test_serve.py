"""``llava-edge serve``: a real uvicorn server on 127.0.0.1 serving the tiny bundle (random
weights), driven by the official ``openai`` client and by raw HTTP for what that client
does not send. One server for the module; its worker's test hooks (``pause``,
``hold_tokens``) make "busy" deterministic, and assertions are on the server's counters
(``/health``), never on wall-clock limits."""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import socket
import threading
import time
from dataclasses import dataclass

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from llava_edge.runtimes.pipeline import LlavaEdge  # noqa: E402
from llava_edge.runtimes.prompt import render  # noqa: E402
from llava_edge.runtimes.remote_fetch import RemotePolicy  # noqa: E402
from llava_edge.runtimes.serve.app import ServeConfig, create_app  # noqa: E402
from llava_edge.runtimes.serve.openai_schema import ApiError, parse_chat_request  # noqa: E402
from llava_edge.runtimes.serve.worker import Worker  # noqa: E402
from scene_images import scene  # noqa: E402
from uvicorn_thread import serving  # noqa: E402

API_KEY = "test-key"
MODEL = "tiny"
MAX_PIXELS = 1_000_000
MAX_BODY = 1024 * 1024
PROMPT = "What colour is the square?"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _data_url(data: bytes, media_type="image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def _user(url: str, text: str = PROMPT) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


@dataclass
class Served:
    port: int
    worker: Worker
    config: ServeConfig

    def client(self, api_key=API_KEY):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=api_key,
                             max_retries=0)

    def request(self, method, path, body=None, headers=None, key=API_KEY):
        """(status, headers, parsed JSON body or raw text) of one plain HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = {"Content-Type": "application/json", **(headers or {})}
        if key:
            h["Authorization"] = f"Bearer {key}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode()
        return resp.status, dict(resp.getheaders()), parsed

    def health(self) -> dict:
        return self.request("GET", "/health", key=None)[2]

    def wait_health(self, pred, what: str) -> dict:
        """Poll /health until ``pred`` holds (a generous bound only guards a hung test)."""
        for _ in range(2400):
            h = self.health()
            if pred(h):
                return h
            time.sleep(0.05)
        raise AssertionError(f"server never reached: {what}; last /health: {h}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    model = LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                           n_threads=1, max_pixels=MAX_PIXELS)
    worker = Worker(model, max_queue=1).start()
    config = ServeConfig(model_name=MODEL, api_key=API_KEY, max_body_bytes=MAX_BODY,
                         timeout_s=300.0, max_pixels=MAX_PIXELS)
    with serving(create_app(worker, config)) as port:
        yield Served(port, worker, config)
    worker.close()


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    """A second instance of the same bundle, used directly through the pipeline API."""
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        yield model


# -- the openai client ----------------------------------------------------------------------


def test_openai_client_answers_about_an_image_like_the_pipeline(server, reference):
    image = scene(1)
    r = server.client().chat.completions.create(
        model=MODEL, messages=[_user(_data_url(_png(image)))], max_tokens=8, temperature=0)
    expected = reference.ask(image, PROMPT, max_new_tokens=8)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == ("length" if expected.stop_reason == "length"
                                          else "stop")
    assert r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.usage.prompt_tokens == expected.n_prompt_tokens
    assert r.usage.completion_tokens == expected.n_tokens
    assert r.usage.total_tokens == expected.n_prompt_tokens + expected.n_tokens


def test_openai_client_streams_an_answer_about_an_image(server, reference):
    image = scene(2)
    stream = server.client().chat.completions.create(
        model=MODEL, messages=[_user(_data_url(_png(image)))], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    expected = reference.ask(image, PROMPT, max_new_tokens=12)
    assert len(pieces) > 1  # it came in pieces, not at once
    assert "".join(pieces).strip() == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices
              and c.choices[0].finish_reason]
    assert finals == [("length" if expected.stop_reason == "length" else "stop")]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.n_tokens
    assert chunks[-1].usage.prompt_tokens == expected.n_prompt_tokens


def test_sampling_options_are_applied(server, reference):
    image, url = scene(3), _data_url(_png(scene(3)))
    kw = dict(model=MODEL, messages=[_user(url)], max_tokens=10, temperature=0.9, top_p=0.8,
              seed=1234)
    a = server.client().chat.completions.create(**kw).choices[0].message.content
    b = server.client().chat.completions.create(**kw).choices[0].message.content
    expected = reference.ask(image, PROMPT, max_new_tokens=10, temperature=0.9, top_p=0.8,
                             seed=1234)
    assert a == b == expected.text
    # A stop string cuts the answer where the pipeline cuts it.
    greedy = reference.ask(image, PROMPT, max_new_tokens=10).text
    stop = greedy[2:5]
    r = server.client().chat.completions.create(model=MODEL, messages=[_user(url)],
                                                max_tokens=10, temperature=0, stop=[stop])
    cut = reference.ask(image, PROMPT, max_new_tokens=10, stop=[stop])
    assert r.choices[0].message.content == cut.text and stop not in cut.text
    assert r.choices[0].finish_reason == "stop"


def test_system_prompt_and_earlier_turns_go_through_the_template(server, reference):
    image = scene(4)
    url = _data_url(_png(image))
    system = "You answer in one word."
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": system}, _user(url)],
        max_tokens=6, temperature=0)
    expected = reference.ask(image, PROMPT, max_new_tokens=6, system=system)
    assert r.choices[0].message.content == expected.text
    assert r.usage.prompt_tokens == expected.n_prompt_tokens

    history = [{"role": "system", "content": system}, _user(url, "What is this?"),
               {"role": "assistant", "content": "A square."},
               {"role": "user", "content": "And its colour?"}]
    r = server.client().chat.completions.create(model=MODEL, messages=history, max_tokens=6,
                                                temperature=0)
    hf = [{"role": "system", "content": system},
          {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
          {"role": "assistant", "content": "A square."},
          {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]}]
    text = render(reference.template, hf, reference.special_tokens)
    assert "A square." in text and text.index(system) < text.index("What is this?")
    n_text = len(reference.llm.tokenize(text)) - 1  # the <image> id stands for 16 positions
    assert r.usage.prompt_tokens == n_text + reference.n_image_tokens


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    status, _, body = server.request("GET", f"/v1/models/{MODEL}")
    assert status == 200 and body["id"] == MODEL
    h = server.health()
    assert h["status"] == "ok" and h["model"] == MODEL and h["max_queue"] == 1
    assert h["busy"] is False and h["queue_depth"] == 0 and h["completed"] >= 1


# -- limits ---------------------------------------------------------------------------------


def _assert_openai_error(body, code=None):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"]
    if code is not None:
        assert body["error"]["code"] == code, body


def test_api_key_is_required(server):
    for key in (None, "wrong-key"):
        status, headers, body = server.request("GET", "/v1/models", key=key)
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
        _assert_openai_error(body, "invalid_api_key")
        status, _, body = server.request("POST", "/v1/chat/completions",
                                         {"model": MODEL, "messages": [_user("x")]}, key=key)
        assert status == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong-key").models.list()
    assert server.request("GET", "/health", key=None)[0] == 200  # open, for load balancers


def test_oversized_body_gets_413(server):
    big = {"model": MODEL, "messages": [_user("x", "a" * (2 * MAX_BODY))]}
    status, _, body = server.request("POST", "/v1/chat/completions", big)
    assert status == 413
    _assert_openai_error(body, "request_too_large")
    assert server.health()["status"] == "ok"


def test_full_queue_gets_429_with_retry_after(server):
    """max_queue=1: with the worker paused, one request waits and the next is refused."""
    before = server.health()
    body = {"model": MODEL, "messages": [_user(_data_url(_png(scene(5))))], "max_tokens": 4,
            "temperature": 0}
    results = {}
    server.worker.pause()
    try:
        waiting = threading.Thread(
            target=lambda: results.update(a=server.request("POST", "/v1/chat/completions", body)))
        waiting.start()
        server.wait_health(lambda h: h["queue_depth"] == 1, "one request queued")
        status, headers, err = server.request("POST", "/v1/chat/completions", body)
        assert status == 429 and int(headers["retry-after"]) >= 1
        _assert_openai_error(err, "queue_full")
        assert err["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            server.client().chat.completions.create(**body)
    finally:
        server.worker.resume()
    waiting.join(120)
    assert results["a"][0] == 200 and results["a"][2]["usage"]["completion_tokens"] >= 1
    after = server.health()
    assert after["rejected"] == before["rejected"] + 2
    assert after["completed"] == before["completed"] + 1


def test_client_disconnect_cancels_its_generation(server):
    """Close the connection after the first streamed piece: the job is cancelled, the
    worker is free, and the next request is answered."""
    before = server.health()
    body = json.dumps({"model": MODEL, "messages": [_user(_data_url(_png(scene(6))))],
                       "max_tokens": 500, "temperature": 0, "stream": True}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    server.worker.hold_tokens(True)  # the job cannot finish on its own
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
            s.sendall(head + body)
            received = b""
            while received.count(b"data: ") < 2:  # the role chunk, then the first piece
                data = s.recv(65536)
                assert data, f"server closed the stream early: {received!r}"
                received += data
        assert received.startswith(b"HTTP/1.1 200")
        assert b'"content":"' in received.split(b"data: ")[2]
        after = server.wait_health(
            lambda h: h["cancelled"] == before["cancelled"] + 1 and not h["busy"],
            "the streamed job cancelled")
    finally:
        server.worker.hold_tokens(False)
    assert after["completed"] == before["completed"] and after["queue_depth"] == 0
    r = server.client().chat.completions.create(
        model=MODEL, messages=[_user(_data_url(_png(scene(6))))], max_tokens=3)
    assert r.usage.completion_tokens >= 1
    assert server.health()["completed"] == before["completed"] + 1


def test_request_past_the_time_limit_gets_504_and_frees_the_worker(server):
    before = server.health()
    server.worker.hold_tokens(True)
    server.config.timeout_s = 1.0
    try:
        status, _, body = server.request("POST", "/v1/chat/completions", {
            "model": MODEL, "messages": [_user(_data_url(_png(scene(7))))], "max_tokens": 50})
    finally:
        server.config.timeout_s = 300.0
        server.worker.hold_tokens(False)
    assert status == 504
    _assert_openai_error(body, "timeout")
    after = server.wait_health(lambda h: h["timed_out"] == before["timed_out"] + 1
                               and not h["busy"], "the job timed out")
    assert after["completed"] == before["completed"]


# -- bad input ------------------------------------------------------------------------------

_IMG = _data_url(_png(scene(8)))
_HUGE = _data_url(_png(Image.new("RGB", (1200, 1000), (9, 9, 9))))  # 1.2 M pixels > 1 M
_BASE = {"model": MODEL, "max_tokens": 4}

BAD = {
    "malformed json": (b'{"model": "tiny", "messages": [', 400, "invalid_json"),
    "not an object": ([1, 2], 400, "invalid_json"),
    "messages not a list": ({**_BASE, "messages": "hi"}, 400, "invalid_type"),
    "no messages": ({"model": MODEL}, 400, "missing_required_parameter"),
    "content wrong type": ({**_BASE, "messages": [{"role": "user", "content": 5}]}, 400,
                           "invalid_type"),
    "unknown role": ({**_BASE, "messages": [{"role": "robot", "content": "hi"}]}, 400,
                     "invalid_value"),
    "max_tokens a string": ({**_BASE, "max_tokens": "4", "messages": [_user(_IMG)]}, 400,
                            "invalid_value"),
    "temperature too high": ({**_BASE, "temperature": 7, "messages": [_user(_IMG)]}, 400,
                             "invalid_value"),
    "seed a float": ({**_BASE, "seed": 1.5, "messages": [_user(_IMG)]}, 400, "invalid_type"),
    "stop a number": ({**_BASE, "stop": 3, "messages": [_user(_IMG)]}, 400, "invalid_type"),
    "stream not a bool": ({**_BASE, "stream": "yes", "messages": [_user(_IMG)]}, 400,
                          "invalid_type"),
    "data url not an image": ({**_BASE, "messages": [_user(_data_url(b"hello", "text/plain"))]},
                              400, "invalid_image"),
    "image bytes not an image": ({**_BASE, "messages": [_user(_data_url(b"not a png"))]}, 400,
                                 "invalid_image"),
    "not base64": ({**_BASE, "messages": [_user("data:image/png;base64,@@@")]}, 400,
                   "invalid_image_url"),
    "huge image": ({**_BASE, "messages": [_user(_HUGE)]}, 400, "invalid_image"),
    "remote url refused": ({**_BASE, "messages": [_user("https://example.com/cat.png")]}, 400,
                           "remote_image_refused"),
    "unknown model": ({**_BASE, "model": "gpt-4o", "messages": [_user(_IMG)]}, 404,
                      "model_not_found"),
    "last message not user": ({**_BASE, "messages": [_user(_IMG), {"role": "assistant",
                                                                    "content": "ok"}]}, 400,
                              "invalid_value"),
    "image marker in text": ({**_BASE, "messages": [_user(_IMG, "<image> twice")]}, 400,
                             "invalid_prompt"),
    "over the context": ({**_BASE, "messages": [_user(_IMG, "red " * 1500)]}, 400,
                         "context_length_exceeded"),
    "n=2": ({**_BASE, "n": 2, "messages": [_user(_IMG)]}, 400, "unsupported_value"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_an_openai_error_and_the_server_stays_up(server, case):
    body, status, code = BAD[case]
    got, _, err = server.request("POST", "/v1/chat/completions", body)
    assert got == status, err
    _assert_openai_error(err, code)
    h = server.health()
    assert h["status"] == "ok" and not h["busy"]


def test_server_answers_after_all_the_bad_input(server):
    r = server.client().chat.completions.create(model=MODEL, messages=[_user(_IMG)],
                                                max_tokens=3)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
    status, _, body = server.request("GET", "/v1/nowhere")
    assert status == 404
    _assert_openai_error(body)


# -- pieces on their own --------------------------------------------------------------------


def test_a_sampling_error_from_the_model_is_a_400_naming_the_option():
    # parse_chat_request refuses out-of-range values first; this is the worker's backstop.
    from llava_edge.errors import SamplingError
    from llava_edge.runtimes.sampling import SamplingParams
    from llava_edge.runtimes.serve.app import _raise_for
    from llava_edge.runtimes.serve.worker import JobEvent

    with pytest.raises(SamplingError) as bad:
        SamplingParams(top_p=2.0)
    with pytest.raises(ApiError) as info:
        _raise_for(JobEvent("error", error=bad.value))
    e = info.value
    assert (e.status, e.type, e.param, e.code) == (400, "invalid_request_error", "top_p",
                                                   "invalid_value")
    assert e.message == "top_p must be in (0, 1], got 2.0"

def test_remote_images_are_fetched_only_when_allowed():
    png = _png(scene(9))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
        raw = json.dumps({"model": MODEL, "messages": [_user(url)]}).encode()
        with pytest.raises(ApiError) as e:
            parse_chat_request(raw, MODEL, MAX_PIXELS)
        assert e.value.code == "remote_image_refused"
        # Loopback is refused unless allowed (tests/test_remote_fetch.py covers the policy).
        with pytest.raises(ApiError, match="a loopback address"):
            parse_chat_request(raw, MODEL, MAX_PIXELS, allow_remote_images=True)
        chat = parse_chat_request(raw, MODEL, MAX_PIXELS, allow_remote_images=True,
                                  remote_policy=RemotePolicy.from_allow_list(["127.0.0.1"]))
    finally:
        httpd.shutdown()
    assert len(chat.images) == 1 and chat.images[0].size == (80, 64)
    assert chat.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": PROMPT}]


def test_serve_command_has_help():
    from click.testing import CliRunner

    from llava_edge.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--max-queue", "--api-key", "--allow-remote-images"):
        assert option in result.output


@pytest.mark.slow
def test_llava_edge_serve_command_streams_to_the_openai_client(tiny_bundle):
    """The command itself (a subprocess, as a user starts it) on a free loopback port."""
    import os
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llava_edge", "serve", str(tiny_bundle), "--port", str(port),
         "--threads", "1", "--api-key", API_KEY, "--model-name", MODEL],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        served = Served(port, None, None)  # type: ignore[arg-type]
        for _ in range(2400):
            assert proc.poll() is None, proc.stderr.read()
            try:
                if served.health()["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.1)
        stream = served.client().chat.completions.create(
            model=MODEL, messages=[_user(_data_url(_png(scene(10))))], max_tokens=8,
            stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip()
        assert served.health()["completed"] == 1
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode in (0, -15)
