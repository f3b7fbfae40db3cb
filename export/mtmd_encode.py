"""Encode an image the way stock llama.cpp does: through an mmproj GGUF and the mtmd library.

Used to check an exported mmproj: :func:`mtmd_image_embeddings` returns the image
embeddings llama.cpp would put into the language model (one row per image token), so
they can be compared with PyTorch's. The image goes through mtmd's own preprocessing
(resize/pad, normalise with the mean and std stored in the mmproj).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

import llama_cpp

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.llama_cpp_lm import set_fields
from llava_edge.runtimes.llama_log import capture_llama_log, last_error

MTMD_INPUT_CHUNK_TYPE_IMAGE = 1


def mtmd_image_embeddings(mmproj_path: str | Path, llm_gguf: str | Path, rgb: np.ndarray,
                          n_threads: int | None = None, verbose: bool = False) -> np.ndarray:
    """Image embeddings ``[n_image_tokens, n_embd]`` of ``rgb`` (uint8 ``[H, W, 3]``)
    computed by llama.cpp from ``mmproj_path`` (with ``llm_gguf`` as its text model)."""
    from llama_cpp import mtmd_cpp

    mmproj_path, llm_gguf = Path(mmproj_path), Path(llm_gguf)
    check_gguf(mmproj_path, architectures=("clip",))
    check_gguf(llm_gguf)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise LlavaEdgeError(f"image must be uint8 [H, W, 3], got {list(rgb.shape)}")

    llama_cpp.llama_backend_init()
    model = ctx = bitmap = chunks = None
    with capture_llama_log(verbose=verbose) as log:
        try:
            params = llama_cpp.llama_model_default_params()
            model = llama_cpp.llama_model_load_from_file(str(llm_gguf).encode(), params)
            if not model:
                raise LlavaEdgeError(f"{llm_gguf}: llama.cpp could not load the model "
                                     f"({last_error(log)})")
            mparams = mtmd_cpp.mtmd_context_params_default()
            set_fields(mparams, use_gpu=False, print_timings=False, warmup=False,
                       n_threads=n_threads or (os.cpu_count() or 1))
            ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), model, mparams)
            if not ctx:
                raise LlavaEdgeError(f"{mmproj_path}: llama.cpp's mtmd could not load the "
                                     f"mmproj ({last_error(log)})")
            h, w, _ = rgb.shape
            data = rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
            bitmap = mtmd_cpp.mtmd_bitmap_init(w, h, data)
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            marker = mtmd_cpp.mtmd_default_marker()
            text = mtmd_cpp.mtmd_input_text(text=marker, text_len=len(marker),
                                            add_special=False, parse_special=True)
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1)
            if rc != 0:
                raise LlavaEdgeError(f"mtmd_tokenize failed with code {rc} ({last_error(log)})")
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    continue
                if mtmd_cpp.mtmd_encode_chunk(ctx, chunk) != 0:
                    raise LlavaEdgeError(f"{mmproj_path}: mtmd could not encode the image "
                                         f"({last_error(log)})")
                n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                n_embd = llama_cpp.llama_model_n_embd(model)
                out = mtmd_cpp.mtmd_get_output_embd(ctx)
                return np.ctypeslib.as_array(out, shape=(n_tokens * n_embd,)).reshape(
                    n_tokens, n_embd).copy()
            raise LlavaEdgeError("mtmd produced no image chunk")
        finally:
            if chunks:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
            if bitmap:
                mtmd_cpp.mtmd_bitmap_free(bitmap)
            if ctx:
                mtmd_cpp.mtmd_free(ctx)
            if model:
                llama_cpp.llama_model_free(model)
