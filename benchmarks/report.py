"""Write a benchmark report: ``results.json``, ``results.md`` and two PNG charts.

``results.json`` holds everything (raw samples, machine, versions, command, limits,
derived figures, targets); :func:`check_report` is its schema check, used by the CLI
before writing and by the tests. The charts are drawn with matplotlib's Agg backend:
``latency.png`` (the time of one request split into stages, per configuration) and
``roofline.png`` (decode tokens/s against the bytes each token reads, with the measured
bandwidth bound). The folder appears complete or not at all.
"""

from __future__ import annotations

from pathlib import Path

from llava_edge.atomic_dir import write_dir, write_json

SCHEMA = "llava-edge-bench/1"
TOP_KEYS = ("schema", "preset", "weights", "date_utc", "command", "machine", "versions",
            "settings", "limits", "results", "skipped", "targets")
RESULT_KEYS = ("config", "load_ms", "samples", "summary", "peak_rss_mb", "disk_mb", "files",
               "derived")
FILES = ("results.json", "results.md", "latency.png", "roofline.png")


class ReportError(ValueError):
    """A report that does not have the shape ``results.json`` promises."""


def check_report(report: dict) -> None:
    """Raise :class:`ReportError` naming every missing part; configurations that failed
    (``error``) or produced no timings count as missing."""
    problems = [f"missing {k!r}" for k in TOP_KEYS if k not in report]
    if report.get("schema") not in (None, SCHEMA):
        problems.append(f"schema {report.get('schema')!r} is not {SCHEMA!r}")
    for r in report.get("results", []):
        name = r.get("config", {}).get("name", "?")
        if "error" in r:
            problems.append(f"{name}: failed ({r['error']})")
            continue
        problems += [f"{name}: missing {k!r}" for k in RESULT_KEYS if k not in r]
        summary = r.get("summary") or {}
        for key in ("first_token_ms", "total_ms"):
            if not summary.get(key):
                problems.append(f"{name}: no {key}")
        if r.get("samples") is not None and len(r["samples"]) != report.get(
                "settings", {}).get("repeats"):
            problems.append(f"{name}: {len(r['samples'])} samples, expected "
                            f"{report['settings'].get('repeats')}")
    if not report.get("results"):
        problems.append("no configuration was measured")
    if problems:
        raise ReportError("; ".join(problems))


def write_report(out: Path, report: dict) -> Path:
    """Write the four files into ``out`` (replacing it, all or nothing); returns ``out``."""
    def fill(tmp: Path) -> None:
        write_json(tmp / "results.json", report, default=str)
        (tmp / "results.md").write_text(markdown(report))
        latency_chart(report, tmp / "latency.png")
        roofline_chart(report, tmp / "roofline.png")

    write_dir(out, fill)
    return out


def _med(r: dict, key: str):
    s = (r.get("summary") or {}).get(key)
    return s["median"] if s else None


def _p90(r: dict, key: str):
    s = (r.get("summary") or {}).get(key)
    return s["p90"] if s else None


def _f(x, digits: int = 0, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(report: dict) -> str:
    """The main markdown table: one row per configuration, medians (p90 where useful)."""
    head = ("| configuration | load ms | preprocess ms | vision ms | prefill ms | "
            "first token ms (p90) | decode tok/s (p90) | total ms | peak RSS MB | disk MB | "
            "decode % of BW bound | vision % of GEMM | first token x default | "
            "decode x default |")
    lines = [head, "|" + " --- |" * 14]
    for r in report["results"]:
        c = r["config"]
        name = c["name"] + (" **(default)**" if c.get("default") else "")
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |" + " |" * 12)
            continue
        d = r.get("derived", {})
        lines.append(
            f"| {name} | {_f(r['load_ms'])} | {_f(_med(r, 'preprocess_ms'), 1)} | "
            f"{_f(_med(r, 'vision_ms'), 1)} | {_f(_med(r, 'prefill_ms'), 1)} | "
            f"{_f(_med(r, 'first_token_ms'), 1)} ({_f(_p90(r, 'first_token_ms'), 1)}) | "
            f"{_f(_med(r, 'decode_tok_s'), 1)} ({_f(_p90(r, 'decode_tok_s'), 1)}) | "
            f"{_f(_med(r, 'total_ms'), 1)} | {_f(r.get('peak_rss_mb'))} | "
            f"{_f(r.get('disk_mb'))} | {_pct(d.get('decode_fraction_of_bandwidth_bound'))} | "
            f"{_pct(d.get('vision_fraction_of_gemm'))} | "
            f"{_f(d.get('first_token_ms_x_default'), 2)} | "
            f"{_f(d.get('decode_tok_s_x_default'), 2)} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """``results.md``: context, the table, targets, what was skipped, notes."""
    m, s, lim = report["machine"], report["settings"], report["limits"]
    bw, gemm = lim.get("bandwidth") or {}, lim.get("gemm") or {}
    lines = [
        f"# llava-edge bench: {report['preset']} ({report['date_utc']} UTC)",
        "",
        f"Weights: {report['weights']}.",
        f"Machine: {m.get('cpu')}, {m.get('physical_cores', '?')} physical / "
        f"{m.get('logical_cores')} logical cores, {m.get('ram_gb', '?')} GB RAM; "
        f"{s['threads']} thread(s) used"
        + (f"; load average {m['load_average'][0]:.1f} at the start, "
           f"{m.get('load_average_end', [0])[0]:.1f} at the end" if "load_average" in m else "")
        + ".",
    ]
    if report.get("machine_note"):
        lines.append(f"Note: {report['machine_note']}")
    lines += [
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".",
        f"Command: `{report['command']}`",
        "",
        f"Request: one {s['image_size']} image, prompt {s['prompt']!r}, up to "
        f"{s['max_new_tokens']} new tokens, greedy. {s['warmup']} warm-up run(s), then "
        f"{s['repeats']} repeats per configuration, each configuration in a fresh process; "
        f"median (p90 in brackets). llama.cpp: n_ctx {s['n_ctx']}, n_batch {s['n_batch']}, "
        f"n_ubatch {s['n_ubatch'] or 'default'}, flash attention "
        f"{'on' if s['flash_attn'] else 'off'}, weight repacking "
        f"{'on' if s.get('repack', True) else 'off (llava-edge rows)'}. "
        f"Matrix: {s['matrix']}.",
        f"Limits measured in this run: memory bandwidth {_f(bw.get('gb_s'), 1)} GB/s "
        f"({bw.get('threads', '?')} threads, numpy copy), fp32 GEMM "
        f"{_f(gemm.get('peak_gflops'), 1)} GFLOP/s ({gemm.get('size', '?')}^2); vision "
        f"{(lim.get('vision_flops_per_image') or 0) / 1e9:.3g} GFLOP per image.",
        "",
        table(report),
        "",
        "Targets for llava-edge's default configuration (measured, not asserted):",
        "",
    ]
    for t in report["targets"]:
        state = {True: "met", False: f"MISSED ({t['missed_by']})", None: "not measured"}[t["met"]]
        v = t["value"]  # ratios to three decimals: 0.945 must not print as a met 0.95
        value = "-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        lines.append(f"- {t['target']}: {value} (target {t['bound']}): {state}")
    if report["skipped"]:
        lines += ["", "Not measured:", ""]
        lines += [f"- {k['name']}: {k['reason']}" for k in report["skipped"]]
    notes = [(r["config"]["name"], n) for r in report["results"] for n in r.get("notes", [])]
    if notes or report.get("notes"):
        lines += ["", "Notes:", ""]
        lines += [f"- {n}" for n in report.get("notes", [])]
        lines += [f"- {name}: {n}" for name, n in notes]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(report: dict, path: Path) -> None:
    """Horizontal stacked bars: preprocess, vision, prefill, decode (median ms); a
    configuration whose stages cannot be separated shows its first token as one bar."""
    plt = _pyplot()
    rows = [r for r in report["results"] if "error" not in r]
    stages = [("preprocess_ms", "preprocess", "#9ecae1"), ("vision_ms", "vision", "#3182bd"),
              ("prefill_ms", "prefill", "#fd8d3c"), ("decode_ms", "decode", "#31a354")]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.8))
    labels = [r["config"]["name"] + (" (default)" if r["config"].get("default") else "")
              for r in rows]
    for i, r in enumerate(rows):
        left = 0.0
        stage_list = stages
        if _med(r, "vision_ms") is None and _med(r, "prefill_ms") is None:
            left = _med(r, "first_token_ms") or 0
            ax.barh(i, left, color="#bdbdbd", hatch="//", label="first token (not separable)")
            stage_list = stages[3:]
        for key, name, color in stage_list:
            v = _med(r, key) or 0
            ax.barh(i, v, left=left, color=color, label=name)
            left += v
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per request (median)")
    ax.set_title(f"{report['preset']}: latency per stage ({report['settings']['threads']} "
                 f"thread(s); {report['weights_short']})")
    handles, names = ax.get_legend_handles_labels()
    by = dict(zip(names, handles))  # one legend entry per stage
    ax.legend(by.values(), by.keys(), loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_chart(report: dict, path: Path) -> None:
    """Decode tokens/s against MB read per token, with bandwidth / bytes as the bound."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    points = [(r["derived"]["decode_bytes_per_token"]["total"] / 1e6, _med(r, "decode_tok_s"),
               r["config"]["name"]) for r in report["results"]
              if "error" not in r and r.get("derived", {}).get("decode_bytes_per_token")
              and _med(r, "decode_tok_s")]
    bw = (report["limits"].get("bandwidth") or {}).get("gb_s")
    if points:
        xs = np.array([p[0] for p in points])
        lo, hi = xs.min() / 2, xs.max() * 2
        if bw:
            grid = np.geomspace(lo, hi, 50)
            ax.plot(grid, bw * 1e3 / grid, "k--",
                    label=f"bandwidth bound ({bw:.1f} GB/s measured)")
        for x, y, name in points:
            ax.scatter([x], [y], s=30)
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("MB read per decoded token (weights + KV cache)")
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title(f"{report['preset']}: decode vs the memory-bandwidth roofline "
                 f"({report['weights_short']})")
    ax.grid(True, which="both", alpha=0.3)
    if points and bw:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
