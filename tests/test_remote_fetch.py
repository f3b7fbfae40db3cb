"""Remote image fetching (``--allow-remote-images``) refuses to be a proxy into the server's
network. Each test plays one attack against local HTTP servers on 127.0.0.1 and 127.0.0.2
(both loopback), or substitutes the resolver and forbids connecting at all: no test sends
traffic off this machine (tests/conftest.py also refuses any non-loopback connection)."""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from llava_edge.errors import LlavaEdgeError, RemoteFetchError
from llava_edge.runtimes.remote_fetch import RemotePolicy, address_refusal, fetch_image_bytes


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
LIMIT = 100_000  # bytes, for the size tests


class _Handler(http.server.BaseHTTPRequestHandler):
    """One attack per path; every request is recorded as (path, Host header)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.seen.append((self.path, self.headers.get("Host")))
        url = urlsplit(self.path)
        route = getattr(self, "_" + url.path.strip("/").split("/")[0].split(".")[0], None)
        if route is None:
            self.send_error(404)
            return
        try:
            route(url)
        except OSError:  # the client hung up: what the limits are for
            pass

    def _img(self, url):
        self._head(200, "image/png", len(PNG))
        self.wfile.write(PNG)

    def _redirect(self, url):  # /redirect?to=LOCATION
        self.send_response(302)
        self.send_header("Location", parse_qs(url.query)["to"][0])
        self.end_headers()

    def _chain(self, url):  # /chain/N -> /chain/N+1, forever
        self.send_response(302)
        self.send_header("Location", f"/chain/{int(url.path.split('/')[2]) + 1}")
        self.end_headers()

    def _endless(self, url):  # no Content-Length, and the body never ends
        self._head(200, "image/png")
        while True:
            self.wfile.write(b"\0" * 65536)

    def _biglength(self, url):  # announces 1 GB, then sends nothing for a while
        self._head(200, "image/png", 1 << 30)
        time.sleep(2)

    def _slow(self, url):  # a byte every 0.2 s: each read is quick, the whole is not
        self._head(200, "image/png", 1000)
        for _ in range(50):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.2)

    def _html(self, url):
        body = b"<html>not an image</html>"
        self._head(200, "text/html; charset=utf-8", len(body))
        self.wfile.write(body)

    def _head(self, status, content_type, length=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str):
        super().__init__((host, 0), _Handler)
        self.seen: list[tuple[str, str]] = []

    def url(self, path: str) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}{path}"


@pytest.fixture(scope="module")
def servers():
    """Two image servers: ``one`` on 127.0.0.1 and ``two`` on 127.0.0.2."""
    started = [_Server("127.0.0.1"), _Server("127.0.0.2")]
    for s in started:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


@pytest.fixture
def one(servers):
    servers[0].seen.clear()
    return servers[0]


@pytest.fixture
def two(servers):
    servers[1].seen.clear()
    return servers[1]


def _policy(*allowed: str, **limits) -> RemotePolicy:
    return RemotePolicy.from_allow_list(allowed, **{"timeout_s": 5.0, **limits})


def _resolver(table: dict[str, str], calls: list | None = None):
    """A getaddrinfo answering from ``table`` (host -> IP), without any DNS query."""
    def getaddrinfo(host, port, *args, **kwargs):
        if calls is not None:
            calls.append(host)
        ip = ipaddress.ip_address(table[host])
        if ip.version == 6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (str(ip), port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(ip), port))]
    return getaddrinfo


@pytest.fixture
def no_connect(monkeypatch):
    """Any connection attempt fails the test: a refused address must never be contacted."""
    def boom(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args!r}")
    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)


# -- allowed and refused hosts ---------------------------------------------------------------


def test_an_allowed_loopback_host_is_fetched_and_decodes(one):
    data = fetch_image_bytes(one.url("/img.png"), _policy("127.0.0.1"))
    assert data == PNG and Image.open(io.BytesIO(data)).size == (8, 6)


def test_loopback_is_refused_without_the_allow_list(one):
    with pytest.raises(RemoteFetchError) as e:
        fetch_image_bytes(one.url("/img.png"), _policy())
    assert "resolves to 127.0.0.1, a loopback address" in str(e.value)
    assert "--allow-remote-hosts" in str(e.value) and one.url("/img.png") in str(e.value)
    assert one.seen == []  # refused before connecting
    assert isinstance(e.value, LlavaEdgeError)


@pytest.mark.parametrize("ip, why", [
    ("10.0.0.5", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),  # cloud metadata
    ("::ffff:10.0.0.1", "an IPv4-mapped form of 10.0.0.1, a private address"),
    ("::ffff:169.254.169.254", "an IPv4-mapped form of 169.254.169.254, a link-local address"),
    ("2002:a9fe:a9fe::1", "a 6to4 form of 169.254.169.254, a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("100.64.0.1", "a shared (CGNAT) address"),
    ("0.0.0.0", "an unspecified address"),
    ("fe80::1", "a link-local address"),
    ("fd00::1", "a private address"),
])
def test_names_resolving_to_refused_addresses_are_never_contacted(no_connect, ip, why):
    resolver = _resolver({"evil.example": ip})
    with pytest.raises(RemoteFetchError) as e:
        fetch_image_bytes("http://evil.example/cat.png", _policy(), resolver=resolver)
    shown = ipaddress.ip_address(ip)  # as Python writes it (::ffff:a00:1 before 3.13)
    assert f"evil.example resolves to {shown}, {why}; allow it with --allow-remote-hosts" \
        in str(e.value)


def test_every_address_is_checked_not_just_the_first(no_connect):
    def resolver(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
    with pytest.raises(RemoteFetchError, match="resolves to 10.0.0.7, a private address"):
        fetch_image_bytes("http://mixed.example/a.png", _policy(), resolver=resolver)


def test_a_public_address_passes_and_the_connection_goes_to_it(monkeypatch):
    # Nothing is sent: the fake connection records where it was asked to go and fails.
    attempts = []

    def record(address, *args, **kwargs):
        attempts.append(address)
        raise ConnectionRefusedError("not in a test")
    monkeypatch.setattr(socket, "create_connection", record)
    resolver = _resolver({"public.example": "93.184.216.34"})
    with pytest.raises(RemoteFetchError, match="could not fetch"):
        fetch_image_bytes("http://public.example/a.png", _policy(), resolver=resolver)
    assert attempts == [("93.184.216.34", 80)]
    assert address_refusal(ipaddress.ip_address("93.184.216.34")) is None


def test_the_connection_uses_the_checked_address_and_the_original_host_name(one):
    # An allowed name mapped to 127.0.0.1: the request reaches our server (the pinned
    # address), carrying the URL's host name in its Host header.
    port = one.server_address[1]
    resolver = _resolver({"images.internal": "127.0.0.1"})
    data = fetch_image_bytes(f"http://images.internal:{port}/img.png",
                             _policy("images.internal"), resolver=resolver)
    assert data == PNG
    assert one.seen == [("/img.png", f"images.internal:{port}")]


def test_dns_rebinding_cannot_swap_the_address(one, two):
    # First answer: 127.0.0.2 (allowed); any later one: 127.0.0.1 (refused). The fetch
    # must resolve once and connect to what it checked.
    port = two.server_address[1]
    calls: list[str] = []
    answers = iter(["127.0.0.2"])

    def rebinding(host, port_, *args, **kwargs):
        calls.append(host)
        return _resolver({host: next(answers, "127.0.0.1")})(host, port_)
    data = fetch_image_bytes(f"http://rebind.example:{port}/img.png", _policy("127.0.0.2"),
                             resolver=rebinding)
    assert data == PNG and len(calls) == 1
    assert [p for p, _ in two.seen] == ["/img.png"] and one.seen == []


def test_allow_list_entries():
    policy = RemotePolicy.from_allow_list(["Images.Internal.", "10.0.0.0/8", "[::1]", " "])
    assert policy.allowed_names == frozenset({"images.internal"})
    assert policy.allows("x", ipaddress.ip_address("10.2.3.4"))
    assert policy.allows("x", ipaddress.ip_address("::ffff:10.2.3.4"))  # mapped form too
    assert policy.allows("x", ipaddress.ip_address("::1"))
    assert policy.allows("IMAGES.internal", ipaddress.ip_address("192.168.0.1"))
    assert not policy.allows("x", ipaddress.ip_address("192.168.0.1"))
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        RemotePolicy.from_allow_list(["10.0.0.0/33"])


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """An HTTPS image server on 127.0.0.1 with a self-signed certificate for
    ``images.internal`` (made with the openssl command), and that certificate's path."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=images.internal", "-addext", "subjectAltName=DNS:images.internal",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    server = _Server("127.0.0.1")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, d / "cert.pem"
    server.shutdown()
    server.server_close()


def test_https_pins_the_address_but_checks_the_certificate_for_the_host_name(tls,
                                                                            monkeypatch):
    import ssl

    server, cert = tls
    server.seen.clear()
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: real(cafile=str(cert)))
    port = server.server_address[1]
    resolver = _resolver({"images.internal": "127.0.0.1", "other.internal": "127.0.0.1"})
    policy = _policy("127.0.0.1")
    data = fetch_image_bytes(f"https://images.internal:{port}/img.png", policy, resolver)
    assert data == PNG and server.seen == [("/img.png", f"images.internal:{port}")]
    # The same address under a name the certificate does not hold: refused by TLS.
    with pytest.raises(RemoteFetchError, match="could not fetch.*(hostname|match)"):
        fetch_image_bytes(f"https://other.internal:{port}/img.png", policy, resolver)


# -- redirects -------------------------------------------------------------------------------


def test_a_redirect_to_a_refused_address_is_refused_naming_it(one, two):
    target = one.url("/img.png")
    with pytest.raises(RemoteFetchError) as e:
        fetch_image_bytes(two.url(f"/redirect?to={target}"), _policy("127.0.0.2"))
    assert f"redirect to {target} refused" in str(e.value)
    assert "127.0.0.1, a loopback address" in str(e.value)
    assert one.seen == []


def test_a_relative_redirect_is_followed_and_rechecked(two):
    data = fetch_image_bytes(two.url("/redirect?to=/img.png"), _policy("127.0.0.2"))
    assert data == PNG and [p for p, _ in two.seen] == ["/redirect?to=/img.png", "/img.png"]


def test_too_many_redirects_are_refused(two):
    with pytest.raises(RemoteFetchError, match="more than 3 redirects"):
        fetch_image_bytes(two.url("/chain/0"), _policy("127.0.0.2", max_redirects=3))
    assert len(two.seen) == 4  # the first request and three redirects


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.2/x.png"])
def test_a_redirect_off_http_is_refused(two, target):
    with pytest.raises(RemoteFetchError) as e:
        fetch_image_bytes(two.url(f"/redirect?to={target}"), _policy("127.0.0.2"))
    assert f"redirect to {target} refused: only http and https" in str(e.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png",
                                 "http://user:pw@127.0.0.1/x.png"])
def test_other_schemes_and_credentials_are_refused(no_connect, url):
    with pytest.raises(RemoteFetchError, match="refused"):
        fetch_image_bytes(url, _policy("127.0.0.1"))


# -- size, time, type ------------------------------------------------------------------------


def test_an_endless_body_stops_at_the_byte_limit(two):
    start = time.monotonic()
    with pytest.raises(RemoteFetchError, match="larger than 100,000 bytes$"):
        fetch_image_bytes(two.url("/endless"), _policy("127.0.0.2", max_bytes=LIMIT))
    assert time.monotonic() - start < 2.0


def test_a_content_length_over_the_limit_is_refused_before_reading(two):
    start = time.monotonic()
    with pytest.raises(RemoteFetchError, match="larger than 100,000 bytes \\(Content-Length"):
        fetch_image_bytes(two.url("/biglength"), _policy("127.0.0.2", max_bytes=LIMIT))
    assert time.monotonic() - start < 1.0  # the server stalls 2 s after its headers


def test_a_slow_drip_body_fails_at_the_total_timeout(two):
    start = time.monotonic()
    with pytest.raises(RemoteFetchError, match="took longer than 1 s"):
        fetch_image_bytes(two.url("/slow"), _policy("127.0.0.2", timeout_s=1.0))
    assert 0.9 < time.monotonic() - start < 2.0  # each byte came within 0.2 s


def test_a_non_image_content_type_is_refused(two):
    with pytest.raises(RemoteFetchError, match="content type text/html is not an image"):
        fetch_image_bytes(two.url("/html"), _policy("127.0.0.2"))


# -- through the server ----------------------------------------------------------------------


@contextlib.contextmanager
def _serving(config):
    """The real app on a free loopback port. Refusals happen while the request is parsed,
    before the worker is involved, so no model is loaded."""
    from llava_edge.runtimes.serve.app import create_app
    from uvicorn_thread import serving

    with serving(create_app(object(), config)) as port:
        yield port


def _post(port: int, image_url: str) -> tuple[int, dict]:
    import http.client

    body = {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": "what is it?"}]}]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_server_answers_a_refused_fetch_with_a_400_naming_why(no_connect_off_loopback):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from llava_edge.runtimes.serve.app import ServeConfig

    url = "http://10.0.0.5/cat.png"
    with _serving(ServeConfig(model_name="tiny", allow_remote_images=True)) as port:
        status, body = _post(port, url)
    assert status == 400, body
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_image_url"
    assert err["param"] == "messages[0].content[0].image_url"
    assert err["message"] == (f"messages[0].content[0]: image URL {url} refused: 10.0.0.5 "
                              "resolves to 10.0.0.5, a private address; allow it with "
                              "--allow-remote-hosts")
    assert no_connect_off_loopback == []

    with _serving(ServeConfig(model_name="tiny")) as port:  # --allow-remote-images off
        status, body = _post(port, url)
    assert status == 400 and body["error"]["code"] == "remote_image_refused"
    assert "start it with --allow-remote-images" in body["error"]["message"]


@pytest.fixture
def no_connect_off_loopback(monkeypatch):
    """Record (and refuse) any connection that is not to loopback; the test client and
    the server's own sockets still work."""
    attempts: list = []
    real = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and not ipaddress.ip_address(
                address[0].split("%")[0]).is_loopback:
            attempts.append(address)
            raise AssertionError(f"a connection was attempted: {address!r}")
        return real(self, address)
    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


def test_serve_command_options(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from click.testing import CliRunner

    from llava_edge.cli import cli

    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    for option in ("--allow-remote-hosts", "--max-remote-image-mb", "--remote-image-timeout"):
        assert option in help_text
    # A malformed allow list is refused before any model is loaded.
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--allow-remote-images",
                                      "--allow-remote-hosts", "images.internal,10.0.0.0/33"])
    assert result.exit_code == 2 and "10.0.0.0/33" in result.output
