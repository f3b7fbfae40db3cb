"""Fetch a remote image for a client without becoming its proxy into our network (SSRF).

A server that downloads URLs on a client's behalf can be pointed at what only the server
can reach: loopback services, the private network, cloud metadata (169.254.169.254).
:func:`fetch_image_bytes` refuses that:

- http and https only (no ``file:``, ``ftp:``, ...), no credentials in the URL;
- the host is resolved **once** and **every** address is checked (:func:`address_refusal`):
  only global unicast addresses pass, also when hidden in an IPv6 form (IPv4-mapped,
  IPv4-compatible, 6to4, Teredo, NAT64); :class:`RemotePolicy` may allow named hosts, IPs
  or networks, private ones included;
- the connection goes to the checked address (a DNS answer that changes between our check
  and the connection, "DNS rebinding", cannot redirect it); the Host header, TLS SNI and
  the certificate check still use the URL's host name;
- redirects are followed by hand, at most ``max_redirects``, each hop checked as the first;
- one deadline covers connecting, the headers and the body (a server that drips a byte at
  a time cannot hold the request), the body is counted while it streams (an endless body
  stops at the limit) and must be an image (or ``application/octet-stream``).

Torch-free; the standard library only.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Union
from urllib.parse import urljoin, urlsplit

from llava_edge.errors import RemoteFetchError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Resolver = Callable[..., list]  # socket.getaddrinfo's signature and answer

ALLOW_HINT = "allow it with --allow-remote-hosts"
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_IPV4_COMPAT = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


@dataclass(frozen=True)
class RemotePolicy:
    """What a remote image fetch may reach and how much it may take.

    ``allowed_names`` (lower-case host names) and ``allowed_networks`` open hosts that the
    address check would refuse (an internal image server, say); build them from
    ``--allow-remote-hosts`` with :meth:`from_allow_list`."""

    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 10.0  # the whole fetch: every hop's connect, headers and body
    max_redirects: int = 3

    @classmethod
    def from_allow_list(cls, entries: Iterable[str], **limits) -> "RemotePolicy":
        """A policy allowing ``entries``: host names, IPs (``10.0.0.5``, ``::1``) or CIDR
        networks (``10.0.0.0/8``); raise ``ValueError`` for a malformed network."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip().strip("[]").rstrip(".").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"--allow-remote-hosts: {entry!r} is neither a host "
                                     "name nor an IP address or network") from None
                names.add(entry)
        return cls(allowed_names=frozenset(names), allowed_networks=tuple(networks), **limits)

    def allows(self, host: str, address: IPAddress) -> bool:
        if host.rstrip(".").lower() in self.allowed_names:
            return True
        # An IPv4-mapped address is its IPv4 address for an allowed IPv4 network.
        candidates = [address] + ([address.ipv4_mapped] if _is_v6(address) and
                                  address.ipv4_mapped else [])
        return any(a in net for a in candidates for net in self.allowed_networks
                   if a.version == net.version)


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (``"a private address"``), or None if it is.

    Everything but global unicast is refused: loopback and unspecified (this host),
    private and shared (the local network), link-local (cloud metadata), multicast and
    reserved. An IPv6 address that carries an IPv4 address (mapped, compatible, 6to4,
    Teredo, NAT64) is refused when that IPv4 address is: the stack may route to it."""
    if _is_v6(address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, v4 = embedded
            inner = address_refusal(v4)
            if inner is not None:
                return f"{kind} form of {v4}, {inner}"
    for test, what in ((lambda a: a.is_unspecified, "an unspecified address"),
                       (lambda a: a.is_loopback, "a loopback address"),
                       (lambda a: a.is_link_local, "a link-local address"),
                       (lambda a: a.is_multicast, "a multicast address"),
                       (lambda a: a.version == 4 and a in _SHARED, "a shared (CGNAT) address"),
                       (lambda a: a.is_private, "a private address"),
                       (lambda a: a.is_reserved, "a reserved address"),
                       (lambda a: not a.is_global, "not a public address")):
        if test(address):
            return what
    return None


def fetch_image_bytes(url: str, policy: RemotePolicy,
                      resolver: Resolver = socket.getaddrinfo) -> bytes:
    """The body of ``url`` (an image), following at most ``policy.max_redirects``
    redirects; raise :class:`RemoteFetchError` naming the URL and why it was refused."""
    deadline = _Deadline(policy.timeout_s, url)
    current = url
    for hop in range(policy.max_redirects + 1):
        what = f"image URL {current}" if hop == 0 else f"redirect to {current}"
        status, location, response, conn = _open(current, what, policy, resolver, deadline)
        try:
            if status in _REDIRECTS:
                if not location:
                    raise RemoteFetchError(f"{current} answered HTTP {status} without a "
                                           "Location")
                current = urljoin(current, location)
                continue
            if status != 200:
                raise RemoteFetchError(f"{current} answered HTTP {status}")
            return _read_image(response, current, policy, deadline)
        finally:
            response.close()
            conn.close()
    raise RemoteFetchError(f"{url}: more than {policy.max_redirects} redirects")


# -- one hop ---------------------------------------------------------------------------------


def _open(url: str, what: str, policy: RemotePolicy, resolver: Resolver,
          deadline: "_Deadline"):
    """Check ``url`` (``what`` names it in errors), connect to its checked address and
    send the GET: (status, Location, response, connection)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    # file:, ftp:, gopher: ... would read local files or speak other protocols.
    if scheme not in ("http", "https"):
        raise RemoteFetchError(f"{what} refused: only http and https URLs are fetched")
    # user@host confuses readers (and allow lists) about which host is meant.
    if parts.username is not None or parts.password is not None:
        raise RemoteFetchError(f"{what} refused: URLs with credentials are not fetched")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        host = (parts.hostname or "").encode("idna").decode("ascii")  # as DNS spells it
    except (ValueError, UnicodeError):
        raise RemoteFetchError(f"{what} refused: malformed host or port") from None
    if not host:
        raise RemoteFetchError(f"{what} refused: no host")

    addresses = _resolve_and_check(host, port, what, policy, resolver)
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, addresses, deadline)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", path, headers={"User-Agent": "llava-edge",
                                           "Accept": "image/*", "Connection": "close"})
        response = conn.getresponse()
    except _TimedOut:
        conn.close()
        raise RemoteFetchError(deadline.message()) from None
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        if deadline.expired():
            raise RemoteFetchError(deadline.message()) from None
        raise RemoteFetchError(f"could not fetch {url} ({e})") from None
    return response.status, response.getheader("Location"), response, conn


def _resolve_and_check(host: str, port: int, what: str, policy: RemotePolicy,
                       resolver: Resolver) -> list[IPAddress]:
    """The host's addresses, resolved once; all must pass (one refused one is enough to
    refuse: which one a client gets is not ours to choose)."""
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise RemoteFetchError(f"{what}: cannot resolve {host} ({e})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 scope id
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise RemoteFetchError(f"{what}: {host} resolves to no address")
    for ip in addresses:
        if policy.allows(host, ip):
            continue
        why = address_refusal(ip)
        if why is not None:
            raise RemoteFetchError(f"{what} refused: {host} resolves to {ip}, {why}; "
                                   f"{ALLOW_HINT}")
    return addresses


def _read_image(response: http.client.HTTPResponse, url: str, policy: RemotePolicy,
                deadline: "_Deadline") -> bytes:
    media_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    # An HTML page or JSON answer is not an image: do not feed it to the decoder.
    if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
        raise RemoteFetchError(f"{url}: content type {media_type or '(none)'} is not an image")
    mb = policy.max_bytes / (1024 * 1024)
    limit_mb = f"{mb:g} MB" if mb >= 1 else f"{policy.max_bytes:,} bytes"
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise RemoteFetchError(f"{url}: the image is larger than {limit_mb} "
                               f"(Content-Length {int(length):,})")
    body = bytearray()
    try:
        # read1 returns what has arrived (read(n) would wait for n bytes); an endless or
        # lying body stops at the limit + 1.
        while len(body) <= policy.max_bytes:
            chunk = response.read1(min(_CHUNK, policy.max_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
    except _TimedOut:
        raise RemoteFetchError(deadline.message()) from None
    except (OSError, http.client.HTTPException) as e:
        if deadline.expired():
            raise RemoteFetchError(deadline.message()) from None
        raise RemoteFetchError(f"could not fetch {url} ({e})") from None
    if len(body) > policy.max_bytes:
        raise RemoteFetchError(f"{url}: the image is larger than {limit_mb}")
    return bytes(body)


# -- a deadline over every socket operation --------------------------------------------------


class _TimedOut(OSError):
    """The fetch's deadline passed."""


class _Deadline:
    def __init__(self, seconds: float, url: str):
        self.seconds, self.url = seconds, url
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise _TimedOut(self.message())
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def message(self) -> str:
        return f"{self.url}: the fetch took longer than {self.seconds:g} s"


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose every send and receive is given only the
    time left: a per-read timeout alone lets a server sending a byte at a time hold the
    request forever. The few methods :mod:`http.client` calls; like a socket, it closes
    when both it and the response's file are closed."""

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock, self._deadline = sock, deadline
        self._files, self._closed = 0, False

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        self._files += 1
        return io.BufferedReader(_DeadlineReader(self))

    def recv_into(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._sock.recv_into(buffer)
        except socket.timeout:
            raise _TimedOut(self._deadline.message()) from None

    def file_closed(self) -> None:
        self._files -= 1
        self._close_if_unused()

    def close(self) -> None:
        self._closed = True
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self._closed and self._files == 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        self._owner = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._owner.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._owner.file_closed()
        super().close()


def _connect(addresses: list[IPAddress], port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first checked address that answers; never a new lookup."""
    error: OSError | None = None
    for ip in addresses:
        try:
            return socket.create_connection((str(ip), port), timeout=deadline.left())
        except _TimedOut:
            raise
        except OSError as e:
            error = e
    assert error is not None
    if deadline.expired():
        raise _TimedOut(deadline.message())
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address checked beforehand; the Host header keeps the URL's host name."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], deadline: _Deadline):
        super().__init__(host, port)
        self._addresses, self._deadline = addresses, deadline

    def connect(self) -> None:
        self.sock = _DeadlineSocket(_connect(self._addresses, self.port, self._deadline),
                                    self._deadline)  # type: ignore[assignment]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; SNI and the certificate check use the URL's
    host name (so pinning the address weakens nothing)."""

    def __init__(self, host: str, port: int, addresses: list[IPAddress], deadline: _Deadline):
        super().__init__(host, port, context=ssl.create_default_context())
        self._addresses, self._deadline = addresses, deadline

    def connect(self) -> None:
        sock = _connect(self._addresses, self.port, self._deadline)
        try:
            sock.settimeout(self._deadline.left())  # the handshake, within the deadline
            tls = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)  # type: ignore[assignment]


def _is_v6(address: IPAddress) -> bool:
    return isinstance(address, ipaddress.IPv6Address)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and the form's name, if any."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "a 6to4", address.sixtofour
    if address.teredo is not None:
        return "a Teredo", address.teredo[1]  # (server, client): the client is reached
    if address in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPAT and int(address) > 1:  # not :: or ::1 (checked as such)
        return "an IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
