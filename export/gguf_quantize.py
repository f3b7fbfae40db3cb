"""Quantize a GGUF language model with llama.cpp's own quantizer (via llama-cpp-python).

``llama_model_quantize`` reads an F32/F16 GGUF and writes the chosen type, with
llama.cpp's per-tensor rules (K-quant mixes such as Q4_K_M keep some tensors at higher
precision; rows not divisible by 256 fall back to a legacy type). It reports nothing to
Python but logs one line per tensor (``[  12/ 291] blk.1.attn_q.weight ...``); those lines
are turned into progress calls.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import llama_cpp

from llava_edge.atomic_dir import atomic_path
from llava_edge.errors import LlavaEdgeError
from llava_edge.progress import Progress
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.llama_cpp_lm import set_fields
from llava_edge.runtimes.llama_log import capture_llama_log, last_error

# Quant type name -> llama_ftype. F32/F16/BF16 are plain float files.
QUANT_TYPES: dict[str, int] = {
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q5_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_S,
    "Q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
}
INT4_QUANT = "Q4_K_M"  # what `--int4` means for the language model
_PROGRESS_LINE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")


def normalize_quants(quants: str | Iterable[str]) -> list[str]:
    """Quant names upper-cased, validated and de-duplicated (order kept).

    Accepts a list or a ``"Q8_0,Q4_K_M"`` / ``"Q8_0|Q4_K_M"`` string.
    """
    if isinstance(quants, str):
        quants = re.split(r"[,|\s]+", quants)
    out: list[str] = []
    for q in quants:
        name = q.strip().upper()
        if not name:
            continue
        if name not in QUANT_TYPES:
            raise LlavaEdgeError(f"unknown GGUF quant type {q!r} (choose from: "
                                 f"{', '.join(QUANT_TYPES)})")
        if name not in out:
            out.append(name)
    if not out:
        raise LlavaEdgeError("no GGUF quant type given")
    return out


def quantize_gguf(src: str | Path, dst: str | Path, quant: str, n_threads: int | None = None,
                  progress: Progress | None = None,
                  verbose: bool = False) -> Path:
    """Quantize the GGUF model ``src`` to ``quant`` (e.g. ``"Q4_K_M"``) into ``dst``.

    ``progress(done_tensors, total_tensors)`` follows llama.cpp's per-tensor log. The
    output is written under a temporary name and renamed when llama.cpp succeeds.
    """
    quant = normalize_quants([quant])[0]
    src, dst = Path(src), Path(dst)
    check_gguf(src)
    params = llama_cpp.llama_model_quantize_default_params()
    set_fields(params, ftype=QUANT_TYPES[quant], nthread=n_threads or (os.cpu_count() or 1))
    dst.parent.mkdir(parents=True, exist_ok=True)

    def on_log(text: str) -> None:
        m = _PROGRESS_LINE.search(text)
        if m and progress:
            progress(int(m.group(1)), int(m.group(2)))

    with atomic_path(dst) as tmp:
        llama_cpp.llama_backend_init()
        with capture_llama_log(on_log, verbose=verbose) as log:
            rc = llama_cpp.llama_model_quantize(str(src).encode("utf-8"),
                                                str(tmp).encode("utf-8"), params)
        if rc != 0 or not tmp.is_file():
            raise LlavaEdgeError(f"{src}: llama.cpp could not quantize to {quant} (code {rc}: "
                                 f"{last_error(log) or 'no message'})")
        check_gguf(tmp)
    return dst
