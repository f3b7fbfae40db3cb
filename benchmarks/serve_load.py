"""Load test for ``llava-edge serve``: N concurrent clients on loopback for a bounded time.

    llava-edge bench-serve-load --preset tiny --clients 8 --duration 60
    llava-edge bench-serve-load --bundle path/to/bundle --clients 4 --duration 120

Starts ``llava-edge serve`` as a subprocess on a free 127.0.0.1 port (``--preset`` builds
that preset locally, with random weights, and exports it to a bundle under ``--work-dir``
first, or reuses the one built there before), then runs
``--clients`` threads that each send chat requests with an image, one after another,
until ``--duration`` seconds have passed (half of them streamed, by default). A 429 is an
answer too: the client waits ``--backoff`` seconds and sends again.

Checked and recorded (not asserted as speed targets):

- every request was answered (200) or refused with 429: none lost (connection error,
  malformed answer) or hung (no answer within ``--request-timeout``);
- the server's own counters (``/health``) agree with what the clients saw;
- the server's resident memory is flat: RSS over the last fifth of the run against the
  fifth after warm-up;
- requests/s, p50/p95 latency of answered requests (and time to first piece when streamed).

Writes ``result.json`` and ``README.md`` to ``--out`` (default
``benchmarks/results/serve-load-<preset>-<date>/``) with the machine, versions and command.

A little over 400 lines: the load test is one tool (clients, the server process, the
checks and the report) and reads best as one file.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from llava_edge.atomic_dir import write_json
from llava_edge.benchmarks.vision_bench import machine_info
from llava_edge.bundle import open_bundle

ROOT = Path(__file__).resolve().parent
MEMORY_FLAT_MB = 20.0  # RSS growth (last fifth vs early fifth) allowed before "not flat"
MEMORY_FLAT_FRACTION = 0.10


@dataclass
class Outcome:
    """One request as a client saw it."""

    start_s: float  # since the load started
    latency_ms: float
    status: int  # HTTP status; 0 = lost (no valid answer), -1 = hung (client timeout)
    streamed: bool
    first_piece_ms: float | None = None
    completion_tokens: int = 0
    note: str = ""


@dataclass
class Client:
    """A client thread's loop: send, wait for the whole answer, repeat until the end."""

    index: int
    port: int
    api_key: str
    model: str
    images: list[str]
    max_tokens: int
    stream_fraction: float
    backoff_s: float
    request_timeout_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    def run(self, t0: float, end: float) -> None:
        rng = random.Random(self.index)
        conn = None
        while time.monotonic() < end:
            streamed = rng.random() < self.stream_fraction
            body = json.dumps({
                "model": self.model, "max_tokens": self.max_tokens, "temperature": 0.7,
                "seed": rng.randrange(1 << 30), "stream": streamed,
                "stream_options": {"include_usage": True} if streamed else None,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": rng.choice(self.images)}},
                    {"type": "text", "text": "What is in the image?"}]}]})
            start = time.monotonic()
            outcome = Outcome(start - t0, 0.0, 0, streamed)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=self.request_timeout_s)
                self._send(conn, body, streamed, start, outcome)
            except socket.timeout:
                outcome.status, outcome.note = -1, "no answer within the client timeout"
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                outcome.status, outcome.note = 0, f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            outcome.latency_ms = (time.monotonic() - start) * 1000
            self.outcomes.append(outcome)
            if outcome.status == 429:
                time.sleep(self.backoff_s)
        if conn is not None:
            conn.close()

    def _send(self, conn, body: str, streamed: bool, start: float, outcome: Outcome) -> None:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json",
                              "Authorization": f"Bearer {self.api_key}"})
        resp = conn.getresponse()
        outcome.status = resp.status
        if resp.status != 200 or not streamed:
            data = json.loads(resp.read())
            if resp.status == 200:
                outcome.completion_tokens = data["usage"]["completion_tokens"]
            elif "error" not in data:
                raise ValueError(f"a {resp.status} without an OpenAI error body")
            return
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise ValueError(f"error event: {chunk['error']['message']}")
            if chunk.get("usage"):
                outcome.completion_tokens = chunk["usage"]["completion_tokens"]
            if (outcome.first_piece_ms is None and chunk["choices"]
                    and chunk["choices"][0]["delta"].get("content")):
                outcome.first_piece_ms = (time.monotonic() - start) * 1000
        if not done:
            raise ValueError("the stream ended without [DONE]")


# -- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port: int, limit_s: float = 300) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if get_json(port, "/health")["status"] == "ok":
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


@contextmanager
def served(cmd: list[str], env: dict, port: int) -> Iterator[subprocess.Popen]:
    """``llava-edge serve`` as a subprocess, once it answers /health; terminated (killed
    after 30 s) when the block ends."""
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_ready(proc, port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def sampling(pid: int, t0: float, every_s: float) -> Iterator[list]:
    """While the block runs, (seconds since ``t0``, RSS MB, open descriptors) of process
    ``pid`` every ``every_s``, appended to the yielded list."""
    import psutil

    proc, out, stop = psutil.Process(pid), [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out.append((time.monotonic() - t0, proc.memory_info().rss / 2**20,
                        proc.num_fds()))
            stop.wait(every_s)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def run_clients(clients: list, t0: float, duration: float, request_timeout: float) -> int:
    """Each client's ``run(t0, t0 + duration)`` in a thread; the number of threads still
    running after a generous join (hung clients)."""
    threads = [threading.Thread(target=c.run, args=(t0, t0 + duration)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 2 * request_timeout)
    return sum(t.is_alive() for t in threads)


def scene(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A synthetic scene: a coloured square (a quarter of the short side) on grey."""
    rng = np.random.default_rng(seed)
    arr = np.full((height, width, 3), 235, np.uint8)
    side = max(1, min(width, height) // 4)
    y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    arr[y:y + side, x:x + side] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def encode_image(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def scene_urls(n: int) -> list[str]:
    """``n`` synthetic 320 x 240 scenes as PNG data URLs."""
    return [data_url(encode_image(scene(seed))) for seed in range(n)]


# -- analysis -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


def summarize(outcomes: list[Outcome], duration_s: float, rss: list, health: dict,
              warmup_s: float) -> dict:
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    other = [o for o in outcomes if o.status not in (200, 429)]
    lat = [o.latency_ms for o in ok]
    first = [o.first_piece_ms for o in ok if o.streamed and o.first_piece_ms is not None]
    steady = [m for t, m in rss if t >= warmup_s] or [m for _, m in rss]
    k = max(1, len(steady) // 5)
    early, late = statistics.median(steady[:k]), statistics.median(steady[-k:])
    growth = late - early
    flat = growth <= max(MEMORY_FLAT_MB, MEMORY_FLAT_FRACTION * early)
    counters_agree = (health["completed"] == len(ok) and health["rejected"] == len(refused)
                      and health["accepted"] == len(ok) + health["cancelled"]
                      + health["timed_out"] + health["failed"])
    return {
        "requests": len(outcomes), "answered_200": len(ok), "refused_429": len(refused),
        "lost_or_hung": len(other),
        "lost_or_hung_notes": sorted({o.note or str(o.status) for o in other}),
        "streamed_200": sum(o.streamed for o in ok),
        "completion_tokens": sum(o.completion_tokens for o in ok),
        "requests_per_s": len(ok) / duration_s,
        "completion_tokens_per_s": sum(o.completion_tokens for o in ok) / duration_s,
        "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                       "max": max(lat) if lat else None},
        "first_piece_ms_streamed": {"p50": percentile(first, 50), "p95": percentile(first, 95)},
        "refusal_latency_ms_p50": percentile([o.latency_ms for o in refused], 50),
        "server_health_after": health,
        "server_counters_agree": counters_agree,
        "rss_mb": {"after_warmup": early, "end": late, "growth": growth, "flat": flat,
                   "peak": max(m for _, m in rss), "samples": len(rss)},
        "passed": not other and counters_agree and flat and bool(ok),
    }


def timeline(outcomes: list[Outcome], elapsed_s: float, step_s: float = 5.0) -> list[dict]:
    """Per ``step_s`` window (by send time): answered, refused, lost and p50 latency, so a
    slowdown or a leak over the run shows without keeping every request."""
    rows = []
    for k in range(int(np.ceil(elapsed_s / step_s))):
        win = [o for o in outcomes if k * step_s <= o.start_s < (k + 1) * step_s]
        ok = [o.latency_ms for o in win if o.status == 200]
        rows.append({"from_s": k * step_s, "answered": len(ok),
                     "refused": sum(o.status == 429 for o in win),
                     "lost_or_hung": sum(o.status not in (200, 429) for o in win),
                     "p50_ms": round(percentile(ok, 50), 1) if ok else None})
    return rows


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("llava-edge", "llama_cpp_python", "onnxruntime", "numpy", "fastapi",
                "starlette", "uvicorn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def markdown(result: dict) -> str:
    s, c, m = result["summary"], result["config"], result["machine"]
    lat, fp, rss = s["latency_ms"], s["first_piece_ms_streamed"], s["rss_mb"]

    def f(v, fmt="{:.0f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = [
        f"# `llava-edge serve` load test: {c['preset']} ({result['date']})",
        "",
        f"**{'PASSED' if s['passed'] else 'FAILED'}**: {s['requests']} requests from "
        f"{c['clients']} concurrent clients over {c['duration_s']:.0f} s on loopback; "
        f"{s['answered_200']} answered (200), {s['refused_429']} refused (429), "
        f"{s['lost_or_hung']} lost or hung.",
        "",
        "Model weights are **random** (a preset built locally): the numbers are about the "
        "server and runtime, not about answer quality." if c["random_weights"] else
        "Model weights: trained.",
        "",
        "| metric | value |", "| --- | --- |",
        f"| answered requests/s | {s['requests_per_s']:.2f} |",
        f"| completion tokens/s (all clients) | {s['completion_tokens_per_s']:.1f} |",
        f"| latency p50 / p95 / max (ms, answered) | {f(lat['p50'])} / {f(lat['p95'])} / "
        f"{f(lat['max'])} |",
        f"| first streamed piece p50 / p95 (ms) | {f(fp['p50'])} / {f(fp['p95'])} |",
        f"| 429 answer latency p50 (ms) | {f(s['refusal_latency_ms_p50'], '{:.1f}')} |",
        f"| server RSS after warm-up / at end / peak (MB) | {rss['after_warmup']:.0f} / "
        f"{rss['end']:.0f} / {rss['peak']:.0f} |",
        f"| RSS growth (MB) | {rss['growth']:+.1f} ({'flat' if rss['flat'] else 'NOT flat'}) |",
        f"| server counters agree with clients | {s['server_counters_agree']} |",
        "",
        "Latency includes queueing: with one model instance, requests wait their turn, so "
        "p95 grows with the number of clients; requests/s is what one instance sustains.",
        "",
        "## Set-up",
        "",
        f"- command: `{result['command']}`",
        f"- server: `{result['server_command']}`",
        f"- clients {c['clients']}, duration {c['duration_s']} s, max_tokens "
        f"{c['max_tokens']}, streamed fraction {c['stream_fraction']}, max queue "
        f"{c['max_queue']}, 429 back-off {c['backoff_s']} s, server threads {c['threads']}",
        f"- machine: {m['cpu']}, {m['logical_cores']} logical CPUs, {m.get('ram_gb')} GB; "
        f"{m['platform']}; load average at start {m['load_average']}, at end "
        f"{result['load_average_end']} (the machine was shared with other jobs: figures are "
        "indicative)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class ServeLoadOptions:
    """What ``llava-edge bench-serve-load`` runs (its options, one field each). Give
    ``bundle`` or ``preset``."""

    bundle: Path | None = None
    preset: str | None = None
    work_dir: Path = Path(tempfile.gettempdir()) / "llava-edge-serve-load"
    clients: int = 8
    duration: float = 60.0
    max_tokens: int = 16
    stream_fraction: float = 0.5
    max_queue: int = 4
    backoff: float = 0.2
    threads: int = 1
    request_timeout: float = 120.0
    warmup: float | None = None  # seconds before the memory baseline (default: a tenth)
    out: Path | None = None
    command: str = "llava-edge bench-serve-load"  # recorded in the result


def run_serve_load(args: ServeLoadOptions) -> dict:
    """Serve the bundle, load it with the clients, write result.json and README.md to
    ``args.out`` and print the markdown; returns the result (``summary.passed`` says
    whether every check held)."""
    from llava_edge.benchmarks.build import ensure_bundle

    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    bundle = (Path(args.bundle) if args.bundle else
              ensure_bundle(args.preset, args.work_dir,
                            purpose="bench-serve-load (building a preset)")[1])
    manifest = open_bundle(bundle, verify="size").manifest
    preset = args.preset or manifest.source.preset or bundle.name
    port, key = free_port(), "load-test-key"
    server_cmd = [sys.executable, "-m", "llava_edge", "serve", str(bundle), "--port",
                  str(port), "--threads", str(args.threads), "--max-queue",
                  str(args.max_queue), "--model-name", preset, "--timeout",
                  str(args.request_timeout)]
    env = {**os.environ, "LLAVA_EDGE_API_KEY": key, "OMP_NUM_THREADS": str(args.threads)}
    machine = machine_info(args.threads)  # the server's threads
    with served(server_cmd, env, port) as proc:
        clients = [Client(i, port, key, preset, scene_urls(4), args.max_tokens,
                          args.stream_fraction, args.backoff, args.request_timeout)
                   for i in range(args.clients)]
        t0 = time.monotonic()
        with sampling(proc.pid, t0, 0.5) as samples:
            hung_threads = run_clients(clients, t0, args.duration, args.request_timeout)
            elapsed = time.monotonic() - t0
        health = get_json(port, "/health")
    rss = [(t, m) for t, m, _ in samples]
    outcomes = [o for c in clients for o in c.outcomes]
    summary = summarize(outcomes, elapsed, rss, health,
                        args.warmup if args.warmup is not None else args.duration / 10)
    summary["hung_client_threads"] = hung_threads
    summary["passed"] = summary["passed"] and hung_threads == 0

    result = {
        "benchmark": "serve-load", "date": date,
        "command": args.command,
        "server_command": " ".join(shlex.quote(a) for a in server_cmd),
        "config": {"preset": preset, "bundle": str(bundle), "clients": args.clients,
                   "duration_s": args.duration, "elapsed_s": elapsed,
                   "max_tokens": args.max_tokens, "stream_fraction": args.stream_fraction,
                   "max_queue": args.max_queue, "backoff_s": args.backoff,
                   "threads": args.threads, "request_timeout_s": args.request_timeout,
                   "random_weights": manifest.source.random_init,
                   "vision": manifest.vision_entry().precision,
                   "llm": manifest.llm_entry().quant},
        "machine": machine, "load_average_end": list(os.getloadavg()),
        "versions": versions(), "summary": summary,
        "rss_mb_samples": [(round(t, 2), round(m, 1)) for t, m in rss],
        "timeline": timeline(outcomes, elapsed),
    }
    out = Path(args.out) if args.out else ROOT / "results" / f"serve-load-{preset}-{date}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "result.json", result)
    (out / "README.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}/result.json and README.md")
    return result
