"""Soak test for ``llava-edge serve``: mixed traffic for a long time, memory watched.

    llava-edge bench-soak --preset tiny --duration 1800          # the recorded 30 minutes
    llava-edge bench-soak --bundle BUNDLE --duration 600 --clients 6

Where ``bench-serve-load`` asks "how much does one instance sustain", this asks "does it
stay well": the server (a subprocess on a free 127.0.0.1 port, as in
:mod:`.serve_load`, whose helpers this reuses) gets more concurrent clients than its queue
holds, each sending a random mix of

- valid requests: one image of a random size (32 px to 1600 px wide) and format (PNG,
  JPEG, WebP), from a small pool (embedding-cache hits) or new (cache churn); streamed or
  not; two images; text only; an image by URL from a local image server on loopback
  (the guarded remote fetch, opened to 127.0.0.1 with ``--allow-remote-hosts``);
- cancels: a stream the client drops after its first piece, a request dropped while it
  waits (the server cancels both);
- bad requests (each with the statuses it may get): malformed JSON, a data URL that is not
  an image, an unknown model, a wrong key, too many pixels, a bad ``max_tokens``, an empty
  conversation, a prompt over the context, a remote URL on a private address (refused
  before any connection), a remote URL that is 404.

The server runs with a small queue (``--max-queue``, default 2), a short ``--timeout``
and an embedding cache bounded at four images' embeddings, so that 429s, cancels and
evictions by bytes all happen many times in a run.

Every request ends in one of: ``ok`` (the answer or refusal its kind expects), ``busy``
(429), ``timed_out`` (504), ``cancelled`` (the client dropped it), or a failure:
``unexpected`` (any other status, a 500 above all), ``lost`` (connection error, malformed
answer, a stream without ``[DONE]``), ``hung`` (no answer within ``--request-timeout``).

Checked (``summary.passed``): no failures; the server's ``/health`` counters agree with
the clients (every admitted job ended; 429s counted alike) and hold no image bytes once
idle; the embedding cache within its byte bound; resident memory flat after the warm-up
(the median of the last fifth of samples at most ``MEMORY_FLAT_MB`` above that of the
first fifth; the least-squares slope is reported in MB/hour); open file descriptors not
growing (last fifth's median at most ``FD_GROWTH`` above the first fifth's). Latency
percentiles per window of ``--window`` seconds show a slowdown over time.

Writes ``result.json`` and ``README.md`` to ``--out`` (default
``benchmarks/results/soak-<preset>-<date>/``) with the machine, versions and command.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from llava_edge.atomic_dir import write_json
from llava_edge.benchmarks.serve_load import (MEMORY_FLAT_MB, ROOT, data_url, encode_image,
                                              free_port, get_json, percentile, run_clients,
                                              sampling, scene, served, versions)
from llava_edge.benchmarks.vision_bench import machine_info
from llava_edge.bundle import open_bundle

FD_GROWTH = 8  # open descriptors: late median minus early median allowed
SIZES = [(32, 32), (160, 120), (336, 336), (640, 480), (1024, 768), (1600, 1200)]
FORMATS = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
MAX_IMAGE_PIXELS = 4_000_000  # the server's limit here; "too_many_pixels" goes over it
FAILURES = ("unexpected", "lost", "hung")

# Kinds of request and their share of the traffic (normalised).
MIX = {"chat": 0.22, "stream": 0.18, "two_images": 0.05, "text_only": 0.05, "remote": 0.05,
       "cancel_stream": 0.10, "cancel_waiting": 0.05, "bad": 0.30}
# Bad requests: name -> the statuses it may get (each is a refusal with an error body).
BAD = {"malformed_json": {400}, "not_an_image": {400}, "unknown_model": {404},
       "wrong_key": {401}, "too_many_pixels": {400, 413}, "bad_max_tokens": {400},
       "empty_messages": {400},
       "over_context": {400, 429, 504},  # admitted to the queue: may wait like any
       "remote_private": {400},
       "remote_missing": {400}}
VALID = {200, 429, 504}


@dataclass
class Outcome:
    """One request as a client saw it."""

    kind: str  # a MIX key, or "bad:<name>"
    start_s: float
    latency_ms: float = 0.0
    status: int = 0  # 0: no HTTP answer
    result: str = "lost"  # ok, busy, timed_out, cancelled, unexpected, lost, hung
    first_piece_ms: float | None = None
    note: str = ""


class ImageServer:
    """PNGs on 127.0.0.1 for the ``remote`` requests: ``/img/<k>.png``; anything else 404."""

    def __init__(self, images: list[bytes]):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                name = self.path.rsplit("/", 1)[-1]
                k = name.removesuffix(".png")
                if self.path.startswith("/img/") and k.isdigit() and int(k) < len(images):
                    body, status, ctype = images[int(k)], 200, "image/png"
                else:
                    body, status, ctype = b"not here", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Traffic:
    """What the clients send: the pool of images and how to build each kind of request."""

    model: str
    key: str
    image_port: int
    pool: list[str]  # data URLs, asked about again and again
    max_tokens: int
    n_ctx: int

    def image_url(self, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return rng.choice(self.pool)
        w, h = rng.choice(SIZES)
        fmt, mime = rng.choice(FORMATS)
        return data_url(encode_image(scene(rng.randrange(1 << 30), w, h), fmt), mime)

    def body(self, kind: str, rng: random.Random) -> tuple[bytes, dict, bool]:
        """(body, extra headers, streamed) for a request of ``kind``."""
        streamed = kind in ("stream", "cancel_stream") or (kind == "remote" and rng.random() < .5)
        n_images = {"text_only": 0, "two_images": 2}.get(kind, 1)
        content = [{"type": "image_url", "image_url": {"url": self.image_url(rng)}}
                   for _ in range(n_images)]
        if kind == "remote":
            content = [{"type": "image_url", "image_url": {
                "url": f"http://127.0.0.1:{self.image_port}/img/{rng.randrange(4)}.png"}}]
        content.append({"type": "text", "text": rng.choice(
            ["What is in the image?", "Describe the scene.", "What colour is the square?"])})
        req = {"model": self.model, "max_tokens": rng.randint(1, self.max_tokens),
               "temperature": rng.choice([0, 0.7]), "seed": rng.randrange(1 << 30),
               "stream": streamed, "messages": [{"role": "user", "content": content}]}
        if streamed:
            req["stream_options"] = {"include_usage": True}
        if kind.startswith("bad:"):
            return self.bad(kind[4:], req, rng)
        return json.dumps(req).encode(), {}, streamed

    def bad(self, name: str, req: dict, rng: random.Random) -> tuple[bytes, dict, bool]:
        user = req["messages"][0]["content"]
        headers: dict = {}
        if name == "malformed_json":
            return json.dumps(req).encode()[:rng.randint(1, 40)], headers, False
        if name == "not_an_image":
            user[0] = {"type": "image_url", "image_url": {"url": data_url(b"not an image")}}
        elif name == "unknown_model":
            req["model"] = "no-such-model"
        elif name == "wrong_key":
            headers["Authorization"] = "Bearer wrong-key"
        elif name == "too_many_pixels":
            big = encode_image(scene(1, 2100, 2000))  # 4.2 M pixels; a small PNG
            user[0] = {"type": "image_url", "image_url": {"url": data_url(big)}}
        elif name == "bad_max_tokens":
            req["max_tokens"] = rng.choice([-1, 0, "ten"])
        elif name == "empty_messages":
            req["messages"] = []
        elif name == "over_context":
            user[-1] = {"type": "text", "text": "word " * (2 * self.n_ctx)}
        elif name == "remote_private":  # refused from the address: nothing is sent to it
            user[0] = {"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}
        elif name == "remote_missing":
            user[0] = {"type": "image_url", "image_url": {
                "url": f"http://127.0.0.1:{self.image_port}/missing.png"}}
        else:
            raise ValueError(f"unknown bad request {name!r}")
        req["stream"] = False
        req.pop("stream_options", None)
        return json.dumps(req).encode(), headers, False


@dataclass
class SoakClient:
    """A client thread: pick a kind, send, read (or drop) the answer, repeat until the end."""

    index: int
    port: int
    traffic: Traffic
    request_timeout_s: float
    backoff_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    def run(self, t0: float, end: float) -> None:
        rng = random.Random(1000 + self.index)
        kinds, weights = zip(*MIX.items())
        while time.monotonic() < end:
            kind = rng.choices(kinds, weights)[0]
            if kind == "bad":
                kind = "bad:" + rng.choice(sorted(BAD))
            start = time.monotonic()
            out = Outcome(kind, start - t0)
            conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                              timeout=self.request_timeout_s)
            try:
                self._one(conn, kind, rng, start, out)
            except socket.timeout:
                out.result, out.note = "hung", "no answer within the client timeout"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                out.result, out.note = "lost", f"{type(e).__name__}: {e}"[:200]
            finally:
                conn.close()  # a new connection per request: descriptors must not pile up
            out.latency_ms = (time.monotonic() - start) * 1000
            self.outcomes.append(out)
            if out.result == "busy":
                time.sleep(self.backoff_s)

    def _one(self, conn, kind: str, rng: random.Random, start: float, out: Outcome) -> None:
        body, headers, streamed = self.traffic.body(kind, rng)
        conn.request("POST", "/v1/chat/completions", body=body, headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.traffic.key}", **headers})
        if kind == "cancel_waiting":
            # Drop the request while it waits or runs; if the answer was already there,
            # it counts as answered.
            conn.sock.settimeout(rng.uniform(0.01, 0.5))
            try:
                resp = conn.getresponse()
            except socket.timeout:
                out.result = "cancelled"
                return
            conn.sock.settimeout(self.request_timeout_s)
        else:
            resp = conn.getresponse()
        out.status = resp.status
        expected = BAD[kind[4:]] if kind.startswith("bad:") else VALID
        if resp.status not in expected:
            out.result, out.note = "unexpected", resp.read()[:200].decode("utf-8", "replace")
            return
        if resp.status != 200 or not streamed:
            data = json.loads(resp.read())
            if resp.status != 200 and "error" not in data:
                raise ValueError(f"a {resp.status} without an OpenAI error body")
            if resp.status == 200 and data["choices"][0]["message"].get("content") is None:
                raise ValueError("an answer without content")
            out.result = {429: "busy", 504: "timed_out"}.get(resp.status, "ok")
            return
        while True:
            line = resp.readline()
            if not line:
                raise ValueError("the stream ended without [DONE]")
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                out.result = "ok"
                return
            chunk = json.loads(payload)
            if "error" in chunk:
                out.result = ("timed_out" if chunk["error"].get("code") == "timeout"
                              else "unexpected")
                out.note = chunk["error"]["message"][:200]
                return
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if out.first_piece_ms is None:
                    out.first_piece_ms = (time.monotonic() - start) * 1000
                if kind == "cancel_stream":
                    out.result = "cancelled"  # closing the connection is the cancel
                    return


def wait_idle(port: int, limit_s: float = 120) -> dict:
    """``/health`` once no job runs or waits (cancelled jobs finish within a ubatch)."""
    end = time.monotonic() + limit_s
    while True:
        h = get_json(port, "/health")
        if (not h["busy"] and h["queue_depth"] == 0) or time.monotonic() > end:
            return h
        time.sleep(0.2)


# -- analysis -------------------------------------------------------------------------------


def trend(samples: list, column: int, warmup_s: float) -> dict:
    """Early and late medians (first and last fifth after the warm-up) and the
    least-squares slope per hour of one sampled column."""
    rows = [r for r in samples if r[0] >= warmup_s] or samples
    t = np.array([r[0] for r in rows])
    v = np.array([r[column] for r in rows], dtype=float)
    k = max(1, len(rows) // 5)
    early, late = statistics.median(v[:k]), statistics.median(v[-k:])
    slope = float(np.polyfit(t, v, 1)[0] * 3600) if len(rows) > 2 and np.ptp(t) > 0 else 0.0
    return {"after_warmup": float(early), "end": float(late), "growth": float(late - early),
            "slope_per_hour": slope, "min": float(v.min()), "max": float(v.max()),
            "samples": len(rows)}


def windows(outcomes: list[Outcome], elapsed_s: float, step_s: float) -> list[dict]:
    """Per window (by send time): results by kind of ending and answered latency
    percentiles, so a slowdown or a leak over the run shows without every request."""
    rows = []
    for k in range(int(np.ceil(elapsed_s / step_s))):
        win = [o for o in outcomes if k * step_s <= o.start_s < (k + 1) * step_s]
        ok = [o.latency_ms for o in win if o.result == "ok" and o.status == 200]
        rows.append({"from_s": k * step_s, **Counter(o.result for o in win),
                     "p50_ms": percentile(ok, 50), "p95_ms": percentile(ok, 95),
                     "p99_ms": percentile(ok, 99)})
    return rows


def summarize(outcomes: list[Outcome], elapsed_s: float, samples: list, health: dict,
              warmup_s: float) -> dict:
    results = Counter(o.result for o in outcomes)
    by_kind: dict[str, Counter] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[f"{o.result}:{o.status}"] += 1
    answered = [o for o in outcomes if o.result == "ok" and o.status == 200]
    lat = [o.latency_ms for o in answered]
    first = [o.first_piece_ms for o in answered if o.first_piece_ms is not None]
    rss, fds = trend(samples, 1, warmup_s), trend(samples, 2, warmup_s)
    rss["flat"] = rss["growth"] <= MEMORY_FLAT_MB
    fds["flat"] = fds["growth"] <= FD_GROWTH
    cache = health["embed_cache"]
    # A request dropped before any answer may have been refused (429) unseen.
    unanswered = sum(1 for o in outcomes if o.result == "cancelled" and o.status == 0)
    checks = {
        "no_failures": not any(results[f] for f in FAILURES),
        "every_admitted_job_ended": health["accepted"] == (
            health["completed"] + health["cancelled"] + health["timed_out"] + health["failed"]),
        "busy_counted_alike": (results["busy"] <= health["rejected"]
                               <= results["busy"] + unanswered),
        "no_image_bytes_held_when_idle": health["queue_image_bytes"] == 0,
        "embed_cache_within_bound": (cache["max_bytes"] is None
                                     or cache["bytes"] <= cache["max_bytes"]),
        "rss_flat": rss["flat"],
        "fds_flat": fds["flat"],
        "every_kind_sent": set(MIX) - {"bad"} <= set(by_kind)
        and any(k.startswith("bad:") for k in by_kind),
    }
    return {
        "requests": len(outcomes), "results": dict(results),
        "failures": [asdict(o) for o in outcomes if o.result in FAILURES][:50],
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "answered_per_s": len(answered) / elapsed_s,
        "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                       "p99": percentile(lat, 99), "max": max(lat) if lat else None},
        "first_piece_ms": {"p50": percentile(first, 50), "p95": percentile(first, 95)},
        "rss_mb": rss, "open_fds": fds, "server_health_after": health,
        "checks": checks, "passed": all(checks.values()),
    }


def markdown(result: dict) -> str:
    s, c, m = result["summary"], result["config"], result["machine"]
    rss, fds, lat = s["rss_mb"], s["open_fds"], s["latency_ms"]

    def f(v, fmt="{:.0f}"):
        return "n/a" if v is None else fmt.format(v)

    r = Counter(s["results"])
    lines = [
        f"# `llava-edge serve` soak: {c['preset']} ({result['date']})",
        "",
        f"**{'PASSED' if s['passed'] else 'FAILED'}**: {s['requests']:,} requests from "
        f"{c['clients']} concurrent clients (queue {c['max_queue']}) over "
        f"{c['elapsed_s'] / 60:.1f} min on loopback: {r['ok']:,} ok, {r['busy']:,} busy (429), "
        f"{r['timed_out']:,} timed out (504), {r['cancelled']:,} cancelled by the client; "
        f"{r['unexpected']} unexpected, {r['lost']} lost, {r['hung']} hung.",
        "",
        "Model weights are **random** (a preset built locally): the figures are about the "
        "server and runtime, not answer quality." if c["random_weights"] else
        "Model weights: trained.",
        "",
        "| metric | value |", "| --- | --- |",
        f"| server RSS after warm-up / at end / max (MB) | {rss['after_warmup']:.1f} / "
        f"{rss['end']:.1f} / {rss['max']:.1f} |",
        f"| RSS growth after warm-up (MB), slope (MB/hour) | {rss['growth']:+.1f}, "
        f"{rss['slope_per_hour']:+.1f} ({'flat' if rss['flat'] else 'NOT flat'}) |",
        f"| open descriptors after warm-up / at end / max | {fds['after_warmup']:.0f} / "
        f"{fds['end']:.0f} / {fds['max']:.0f} ({'flat' if fds['flat'] else 'NOT flat'}) |",
        f"| answered requests/s | {s['answered_per_s']:.2f} |",
        f"| latency p50 / p95 / p99 / max (ms, answered) | {f(lat['p50'])} / {f(lat['p95'])} "
        f"/ {f(lat['p99'])} / {f(lat['max'])} |",
        f"| first streamed piece p50 / p95 (ms) | {f(s['first_piece_ms']['p50'])} / "
        f"{f(s['first_piece_ms']['p95'])} |",
        "",
        "Checks: " + ", ".join(f"{k} {'yes' if v else '**NO**'}"
                               for k, v in s["checks"].items()) + ".",
        "",
        "## Requests by kind (result:status)",
        "",
        "| kind | results |", "| --- | --- |",
        *(f"| {k} | {', '.join(f'{n} {x:,}' for n, x in sorted(v.items()))} |"
          for k, v in s["by_kind"].items()),
        "",
        "## Over time",
        "",
        "| from (s) | ok | busy | timed out | cancelled | failures | p50 / p95 / p99 (ms) "
        "| RSS (MB) | fds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    samples = result["samples"]
    for w in result["windows"]:
        near = [x for x in samples if w["from_s"] <= x[0] < w["from_s"] + c["window_s"]]
        lines.append(
            f"| {w['from_s']:.0f} | {w.get('ok', 0)} | {w.get('busy', 0)} | "
            f"{w.get('timed_out', 0)} | {w.get('cancelled', 0)} | "
            f"{sum(w.get(k, 0) for k in FAILURES)} | {f(w['p50_ms'])} / {f(w['p95_ms'])} / "
            f"{f(w['p99_ms'])} | {f(near[-1][1] if near else None, '{:.1f}')} | "
            f"{f(near[-1][2] if near else None)} |")
    h = s["server_health_after"]
    lines += [
        "",
        "## Set-up",
        "",
        f"- command: `{result['command']}`",
        f"- server: `{result['server_command']}`",
        f"- traffic mix: {', '.join(f'{k} {v:.0%}' for k, v in MIX.items())}; bad requests "
        f"evenly among {', '.join(sorted(BAD))}; images {', '.join(f'{w}x{h}' for w, h in SIZES)} "
        "as PNG / JPEG / WebP, half from a pool of 8, half new",
        f"- server after the run, idle: {h['accepted']:,} accepted, {h['completed']:,} "
        f"completed, {h['cancelled']:,} cancelled, {h['timed_out']:,} timed out, "
        f"{h['failed']:,} failed (prompts over the context), {h['rejected']:,} rejected; "
        f"embedding cache {h['embed_cache']['entries']} entries, "
        f"{h['embed_cache']['bytes']:,} of {h['embed_cache']['max_bytes']:,} bytes, "
        f"{h['embed_cache']['evictions']:,} evictions",
        f"- warm-up {c['warmup_s']:.0f} s before the memory baseline; samples every "
        f"{c['sample_every_s']} s",
        f"- machine: {m['cpu']}, {m['logical_cores']} logical CPUs, {m.get('ram_gb')} GB; "
        f"{m['platform']}; load average at start {m['load_average']}, at end "
        f"{result['load_average_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class SoakOptions:
    """What ``llava-edge bench-soak`` runs. Give ``bundle`` or ``preset``."""

    bundle: Path | None = None
    preset: str | None = None
    work_dir: Path = Path(tempfile.gettempdir()) / "llava-edge-soak"
    duration: float = 1800.0
    clients: int = 6
    max_queue: int = 2
    max_tokens: int = 24
    threads: int = 1
    server_timeout: float = 20.0  # the server's --timeout: some queued requests reach it
    embed_cache_mb: float | None = None  # default: 4 images' embeddings (see cache_mb)
    request_timeout: float = 120.0
    backoff: float = 0.2
    warmup: float | None = None  # default: a tenth of the duration
    window: float = 60.0
    sample_every: float = 1.0
    out: Path | None = None
    command: str = "llava-edge bench-soak"


def cache_mb(manifest, images: int = 4) -> float:
    """MiB for ``images`` LLaVA-1.5-style images' float32 embeddings: a byte bound the
    run's traffic exceeds, so that the cache evicts by bytes (its count bound is 16)."""
    return images * manifest.image.n_tokens * manifest.image.n_embd * 4 / 2**20


def run_soak(args: SoakOptions) -> dict:
    """Serve the bundle, run the traffic for ``args.duration`` seconds, write result.json
    and README.md to ``args.out``; returns the result (``summary.passed``)."""
    from llava_edge.benchmarks.build import ensure_bundle

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    bundle = (Path(args.bundle) if args.bundle else ensure_bundle(
        args.preset, args.work_dir, purpose="bench-soak (building a preset)")[1])
    manifest = open_bundle(bundle, verify="size").manifest
    preset = args.preset or manifest.source.preset or bundle.name
    port, key = free_port(), "soak-test-key"
    embed_cache_mb = args.embed_cache_mb if args.embed_cache_mb is not None else cache_mb(manifest)
    pngs = [encode_image(scene(s, *SIZES[s % len(SIZES)])) for s in range(4)]
    with ImageServer(pngs) as images:
        server_cmd = [
            sys.executable, "-m", "llava_edge", "serve", str(bundle), "--port", str(port),
            "--threads", str(args.threads), "--max-queue", str(args.max_queue),
            "--model-name", preset, "--timeout", str(args.server_timeout),
            "--embed-cache-mb", f"{embed_cache_mb:.4f}",
            "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--allow-remote-images",
            "--allow-remote-hosts", "127.0.0.1"]
        env = {**os.environ, "LLAVA_EDGE_API_KEY": key, "OMP_NUM_THREADS": str(args.threads)}
        machine = machine_info(args.threads)
        with served(server_cmd, env, port) as proc:
            rng = random.Random(0)
            traffic = Traffic(preset, key, images.port,
                              [data_url(encode_image(scene(s, *rng.choice(SIZES)), fmt), mime)
                               for s, (fmt, mime) in zip(range(8), FORMATS * 3)],
                              args.max_tokens, manifest.prompt.n_ctx)
            clients = [SoakClient(i, port, traffic, args.request_timeout, args.backoff)
                       for i in range(args.clients)]
            t0 = time.monotonic()
            with sampling(proc.pid, t0, args.sample_every) as samples:
                hung_threads = run_clients(clients, t0, args.duration, args.request_timeout)
                elapsed = time.monotonic() - t0
                health = wait_idle(port)
    outcomes = [o for c in clients for o in c.outcomes]
    warmup = args.warmup if args.warmup is not None else args.duration / 10
    summary = summarize(outcomes, elapsed, samples, health, warmup)
    summary["checks"]["no_hung_client_threads"] = hung_threads == 0
    summary["passed"] = all(summary["checks"].values())
    result = {
        "benchmark": "soak", "date": date, "command": args.command,
        "server_command": " ".join(shlex.quote(a) for a in server_cmd),
        "config": {"preset": preset, "bundle": str(bundle), "clients": args.clients,
                   "duration_s": args.duration, "elapsed_s": elapsed,
                   "max_queue": args.max_queue, "max_tokens": args.max_tokens,
                   "threads": args.threads, "server_timeout_s": args.server_timeout,
                   "embed_cache_mb": embed_cache_mb, "warmup_s": warmup,
                   "window_s": args.window, "sample_every_s": args.sample_every,
                   "request_timeout_s": args.request_timeout, "backoff_s": args.backoff,
                   "random_weights": manifest.source.random_init,
                   "vision": manifest.vision_entry().precision,
                   "llm": manifest.llm_entry().quant},
        "machine": machine, "load_average_end": list(os.getloadavg()),
        "versions": versions(), "summary": summary,
        "windows": windows(outcomes, elapsed, args.window),
        "samples": [(round(t, 1), round(r, 1), n) for t, r, n in samples],
    }
    out = Path(args.out) if args.out else ROOT / "results" / f"soak-{preset}-{date}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "result.json", result)
    (out / "README.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}/result.json and README.md")
    return result
