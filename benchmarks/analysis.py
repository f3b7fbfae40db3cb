"""Figures derived from the measured samples: roofline fractions, ratios, targets.

* Decode against the memory-bandwidth bound: each new token reads every weight of the
  language model once (the token-embedding table excepted: one row) plus the KV cache
  so far, so ``tokens/s <= bandwidth / bytes per token``. Bytes come from the GGUF's
  tensor table (the file's own types; fp32 for PyTorch), the KV cache at f16.
* Vision against the compute bound: FLOPs per image (counted from the config by
  :func:`llava_edge.export.vision_graph.vision_flops`) over the measured fp32 GEMM rate.
* Ratios of every configuration to the bundle's default (``--int4``) one, and the
  issue's targets for llava-edge's default against its peers, each with how much it
  was missed by. Reported, never asserted.
"""

from __future__ import annotations

from pathlib import Path

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.gguf_check import read_gguf_info

KV_BYTES = 2  # llama.cpp's default KV cache type is f16


def decode_bytes_per_token(gguf: Path, context: int, weight_bytes: int | None = None) -> dict:
    """Bytes one decode step reads: weights (all but the token-embedding table) plus the
    KV cache of ``context`` positions. ``weight_bytes``: element size to use instead of
    the file's types (4 for PyTorch fp32)."""
    info = read_gguf_info(gguf)
    arch = info.architecture or "llama"
    weights = 0
    for t in info.tensors:
        if t.name == "token_embd.weight" and any(x.name == "output.weight" for x in info.tensors):
            continue  # one row read per token; a tied table is the output head: read whole
        n = 1
        for d in t.shape:
            n *= d
        weights += n * weight_bytes if weight_bytes else (t.nbytes or 0)
    m = info.metadata
    n_layer = m.get(f"{arch}.block_count", 0)
    n_head = m.get(f"{arch}.attention.head_count", 1)
    n_kv = m.get(f"{arch}.attention.head_count_kv", n_head)
    head_dim = m.get(f"{arch}.embedding_length", 0) // max(1, n_head)
    kv = n_layer * 2 * n_kv * head_dim * context * KV_BYTES
    return {"weights": weights, "kv_cache": kv, "total": weights + kv, "context": context}


def _median(result: dict, key: str) -> float | None:
    s = (result.get("summary") or {}).get(key)
    return s["median"] if s else None


def add_derived(results: list[dict], limits: dict, bundle, vision_flops: int | None,
                max_new_tokens: int) -> None:
    """Add ``derived`` (roofline fractions, ratios to the default) to each result."""
    default = next((r for r in results if r["config"].get("default") and "error" not in r),
                   None)
    bw = limits.get("bandwidth", {}).get("gb_s")
    gemm = limits.get("gemm", {}).get("peak_gflops")
    for r in results:
        if "error" in r:
            continue
        c, d = r["config"], {}
        n_prompt = (r["samples"][0].get("n_prompt_tokens") if r["samples"] else None) or 0
        context = int(n_prompt + max_new_tokens / 2)  # the average context while decoding
        quant = c["llm"]
        torch_bytes = {"torch": 4, "torch-bf16": 2}.get(quant)  # per weight, if PyTorch's
        gguf_quant = (default or r)["config"]["llm"] if torch_bytes else quant
        try:
            gguf = bundle.file(bundle.llm_entry(gguf_quant).file)
            b = decode_bytes_per_token(gguf, context, torch_bytes)
        except (LlavaEdgeError, OSError):  # a bundle without that GGUF: no roofline figure
            b = None
        tok_s = _median(r, "decode_tok_s")
        if b:
            d["decode_bytes_per_token"] = b
            if bw:
                d["bandwidth_bound_tok_s"] = bw * 1e9 / b["total"]
                d["decode_fraction_of_bandwidth_bound"] = (tok_s / d["bandwidth_bound_tok_s"]
                                                           if tok_s else None)
        vision_ms = _median(r, "vision_ms")
        if vision_flops and gemm and vision_ms:
            d["vision_gflops"] = vision_flops / (vision_ms / 1000) / 1e9
            d["vision_fraction_of_gemm"] = d["vision_gflops"] / gemm
        if default:
            for key in ("first_token_ms", "total_ms", "decode_tok_s", "vision_ms"):
                mine, base = _median(r, key), _median(default, key)
                d[f"{key}_x_default"] = mine / base if mine and base else None
            if r.get("peak_rss_mb") and default.get("peak_rss_mb"):
                d["peak_rss_x_default"] = r["peak_rss_mb"] / default["peak_rss_mb"]
        r["derived"] = d


def _target(name: str, value: float | None, op: str, bound: float, unit: str = "x") -> dict:
    """One target: ``value op bound``; ``missed_by`` says how far off it is when missed."""
    if value is None:
        return {"target": name, "value": None, "bound": f"{op} {bound}", "met": None,
                "missed_by": "not measured"}
    met = value <= bound if op == "<=" else value >= bound
    missed = None
    if not met:
        missed = (f"{value / bound:.3f}x the bound" if unit == "x"
                  else f"{value - bound:+.0f} {unit}")
    return {"target": name, "value": value, "bound": f"{op} {bound}", "met": met,
            "missed_by": missed}


def targets(results: list[dict]) -> list[dict]:
    """The issue's targets for llava-edge's default configuration against its peers."""
    def find(kind, llm=None, tuned=False):
        return next((r for r in results if r["config"]["kind"] == kind and "error" not in r
                     and bool(r["config"].get("tuned")) == tuned
                     and llm in (None, r["config"]["llm"])), None)

    default = next((r for r in results if r["config"].get("default") and "error" not in r),
                   None)
    tuned = find("llava-edge", tuned=True)
    hf, llava = find("transformers", "torch"), find("llama.cpp-llava")
    # Each row's decode is held to raw llama.cpp on its own GGUF and llama.cpp settings.
    raw = {"": find("llama.cpp-raw"), "tuned: ": find("llama.cpp-raw", tuned=True)}

    def ratio(key, a, b):
        x, y = a and _median(a, key), b and _median(b, key)
        return x / y if x and y else None

    out = []
    for label, row in (("", default), ("tuned: ", tuned)):
        if label and row is None:
            continue  # no tuned row in this run
        out += [
            _target(f"{label}time to first token vs llama.cpp's LLaVA path",
                    ratio("first_token_ms", row, llava), "<=", 0.5),
            _target(f"{label}time to first token vs transformers",
                    ratio("first_token_ms", row, hf), "<=", 0.6),
            _target(f"{label}decode tokens/s vs raw llama.cpp (same GGUF)",
                    ratio("decode_tok_s", row, raw[label]), ">=", 0.95),
            _target(f"{label}decode tokens/s vs transformers fp32",
                    ratio("decode_tok_s", row, hf), ">=", 4.0),
        ]
        rss = row and row.get("peak_rss_mb")
        bound = row and 1.2 * row["disk_mb"] + 300
        out.append(_target(f"{label}peak RSS <= 1.2x loaded files + 300 MB (MB)", rss, "<=",
                           round(bound, 1) if bound else 0.0, unit="MB"))
    return out
