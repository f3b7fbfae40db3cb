"""The soak test's short version (CI) and its analysis.

The recorded 30-minute run is under ``benchmarks/results/soak-*``; here the same traffic
runs for ~25 s against the tiny bundle's server (a subprocess on 127.0.0.1), and every
check but the memory trend must hold (25 s is all warm-up for memory; the figures are
still recorded and checked for presence).
"""

from __future__ import annotations

import json

import pytest

from llava_edge.benchmarks.soak import (BAD, MIX, Outcome, SoakOptions, run_soak, summarize,
                                        trend)


def test_trend_reads_a_slope_per_hour_and_medians_after_warmup():
    # 1 MB per minute after a 10 s warm-up spike: 60 MB/hour, growth over the fifths
    samples = [(t, (500.0 if t < 10 else 100.0 + t / 60), 12) for t in range(0, 600)]
    rss = trend(samples, 1, warmup_s=10)
    assert rss["slope_per_hour"] == pytest.approx(60.0, rel=1e-6)
    assert rss["max"] < 500  # the warm-up is left out
    assert 7 < rss["growth"] < 8  # ~4/5 of the 590 s window at 1 MB/min
    assert trend(samples, 2, 10)["growth"] == 0


def _health(**kw):
    h = {"accepted": 3, "completed": 2, "cancelled": 1, "timed_out": 0, "failed": 0,
         "rejected": 1, "queue_image_bytes": 0, "busy": False, "queue_depth": 0,
         "embed_cache": {"entries": 1, "bytes": 10, "max_bytes": 100, "evictions": 0}}
    h.update(kw)
    return h


def _outcomes(extra=()):
    kinds = [k for k in MIX if k != "bad"] + [f"bad:{b}" for b in BAD]
    return [Outcome(k, i, 5.0, 200, "ok") for i, k in enumerate(kinds)] + [
        Outcome("chat", 1, 1.0, 429, "busy"), *extra]


def test_summary_passes_a_clean_run_and_fails_on_each_kind_of_trouble():
    flat = [(t, 100.0, 10) for t in range(100)]
    assert summarize(_outcomes(), 100, flat, _health(), 10)["passed"]
    for extra in ("unexpected", "lost", "hung"):
        s = summarize(_outcomes([Outcome("chat", 5, 1, 500, extra)]), 100, flat, _health(), 10)
        assert not s["checks"]["no_failures"] and s["failures"][0]["result"] == extra
    s = summarize(_outcomes(), 100, flat, _health(completed=1), 10)
    assert not s["checks"]["every_admitted_job_ended"]
    s = summarize(_outcomes(), 100, flat, _health(rejected=2), 10)
    assert not s["checks"]["busy_counted_alike"]
    # ... unless a request dropped before any answer may have been that 429
    dropped = Outcome("cancel_waiting", 3, 1, 0, "cancelled")
    s = summarize(_outcomes([dropped]), 100, flat, _health(rejected=2), 10)
    assert s["checks"]["busy_counted_alike"]
    s = summarize(_outcomes(), 100, flat, _health(queue_image_bytes=9), 10)
    assert not s["checks"]["no_image_bytes_held_when_idle"]
    leak = [(t, 100.0 + t, 10 + t) for t in range(100)]
    s = summarize(_outcomes(), 100, leak, _health(), 10)
    assert not s["checks"]["rss_flat"] and not s["checks"]["fds_flat"]


def test_short_soak_against_the_tiny_server(tiny_bundle, tmp_path):
    out = tmp_path / "soak"
    result = run_soak(SoakOptions(bundle=tiny_bundle, duration=25, clients=5, max_queue=1,
                                  max_tokens=8, window=5, warmup=5, sample_every=0.5,
                                  out=out, command="pytest tests/test_soak.py"))
    s = result["summary"]
    failing = {k for k, v in s["checks"].items() if not v} - {"rss_flat", "fds_flat"}
    assert not failing, (failing, s["failures"][:5], s["results"])
    assert s["results"]["ok"] > 20 and s["requests"] > 40
    # every kind of request was sent and ended as its kind should (checked per request)
    assert set(MIX) - {"bad"} <= set(s["by_kind"])
    assert any(k.startswith("bad:") for k in s["by_kind"])
    # the server cancelled what the clients dropped, and refused the overflow
    h = s["server_health_after"]
    assert s["results"].get("cancelled", 0) >= 1 and h["cancelled"] >= 1
    # the cache's byte bound (four images' worth by default) is what evicted
    c = h["embed_cache"]
    assert c["bytes"] <= c["max_bytes"] and c["evictions"] > 0 and c["entries"] <= 4
    for key in ("rss_mb", "open_fds"):
        assert s[key]["samples"] > 10 and s[key]["max"] > 0
    saved = json.loads((out / "result.json").read_text())
    assert saved["summary"]["requests"] == s["requests"] and saved["windows"]
    assert "Requests by kind" in (out / "README.md").read_text()
