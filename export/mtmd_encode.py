"""Encode an image the way stock llama.cpp does: through an mmproj GGUF and the mtmd library.

Used to check an exported mmproj: :func:`mtmd_image_embeddings` returns the image
embeddings llama.cpp would put into the language model (one row per image token), so
they can be compared with PyTorch's. The image goes through mtmd's own preprocessing
(resize/pad, normalise with the mean and std stored in the mmproj). The encoding itself is
the runtime's (:class:`~llava_edge.runtimes.vision_mtmd.MtmdVisionEncoder`);
:func:`mtmd_greedy` runs stock llama.cpp's whole path, prompt and generation.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

import llama_cpp

from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.compute_thread import for_llama_cpp
from llava_edge.runtimes.gguf_check import check_gguf
from llava_edge.runtimes.llama_cpp_lm import set_fields
from llava_edge.runtimes.llama_log import capture_llama_log, last_error
from llava_edge.runtimes.vision_mtmd import (MTMD_INPUT_CHUNK_TYPE_IMAGE, MtmdVisionEncoder,
                                              text_chunk_ids)


def mtmd_image_embeddings(mmproj_path: str | Path, llm_gguf: str | Path, rgb: np.ndarray,
                          n_threads: int | None = None, verbose: bool = False) -> np.ndarray:
    """Image embeddings ``[n_image_tokens, n_embd]`` of ``rgb`` (uint8 ``[H, W, 3]``)
    computed by llama.cpp from ``mmproj_path`` (with ``llm_gguf`` as its text model): the
    rows of all its image chunks, in order (one chunk for LLaVA-1.5; for an mmproj with
    grid pinpoints, the overview then one chunk per tile)."""
    chunks = mtmd_chunks(mmproj_path, llm_gguf, rgb, n_threads, verbose)
    return np.concatenate([c for c in chunks if isinstance(c, np.ndarray)], axis=0)


def mtmd_chunks(mmproj_path: str | Path, llm_gguf: str | Path, rgb: np.ndarray,
                n_threads: int | None = None, verbose: bool = False) -> list:
    """What mtmd makes of a prompt that is just the image marker: its chunks in order,
    an image chunk as its embeddings ``[n_tokens, n_embd]``, a text chunk (separators
    mtmd may add between tiles) as its list of token ids (on the CPU, as llama.cpp's
    default build runs it)."""
    encoder = MtmdVisionEncoder(mmproj_path, llm_gguf, n_threads=n_threads, use_gpu=False,
                                warmup=False, verbose=verbose)
    try:
        return encoder.chunks(rgb)
    finally:
        encoder.close()


def mtmd_greedy(mmproj_path: str | Path, llm_gguf: str | Path, prompt: str, rgb: np.ndarray,
                n_tokens: int, image_marker: str = "<image>", n_ctx: int = 512,
                n_threads: int | None = None, verbose: bool = False) -> dict:
    """Stock llama.cpp's whole multimodal path on ``prompt`` (``image_marker`` where the
    image goes): mtmd tokenizes text and image, ``mtmd_helper_eval_chunks`` evaluates
    them (llama.cpp's own image embeddings), then ``n_tokens`` greedy tokens. Returns the
    text token ids mtmd made (one list per text chunk), the number of positions the
    prompt took, the greedy token ids and the logits after the prompt.

    It all runs on the process's llama.cpp thread, as the runtime's models do (export's
    parity checks run ONNX Runtime's int8 graphs in the same process: see
    runtimes/compute_thread.py)."""
    return for_llama_cpp().run(_mtmd_greedy, mmproj_path, llm_gguf, prompt, rgb, n_tokens,
                               image_marker, n_ctx, n_threads, verbose)


def _mtmd_greedy(mmproj_path, llm_gguf, prompt, rgb, n_tokens, image_marker, n_ctx,
                 n_threads, verbose) -> dict:
    from llama_cpp import mtmd_cpp

    mmproj_path, llm_gguf = Path(mmproj_path), Path(llm_gguf)
    check_gguf(mmproj_path, architectures=("clip",))
    check_gguf(llm_gguf)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    threads = n_threads or (os.cpu_count() or 1)
    llama_cpp.llama_backend_init()
    model = lctx = ctx = bitmap = chunks = None
    with capture_llama_log(verbose=verbose) as log:
        try:
            model = llama_cpp.llama_model_load_from_file(
                str(llm_gguf).encode(), llama_cpp.llama_model_default_params())
            if not model:
                raise LlavaEdgeError(f"{llm_gguf}: llama.cpp could not load the model "
                                     f"({last_error(log)})")
            cparams = llama_cpp.llama_context_default_params()
            set_fields(cparams, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                       n_threads=threads, n_threads_batch=threads)
            lctx = llama_cpp.llama_init_from_model(model, cparams)
            if not lctx:
                raise LlavaEdgeError(f"llama.cpp could not create a context ({last_error(log)})")
            mparams = mtmd_cpp.mtmd_context_params_default()
            set_fields(mparams, use_gpu=False, print_timings=False, warmup=False,
                       n_threads=threads)
            ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj_path).encode(), model, mparams)
            if not ctx:
                raise LlavaEdgeError(f"{mmproj_path}: llama.cpp's mtmd could not load the "
                                     f"mmproj ({last_error(log)})")
            h, w, _ = rgb.shape
            bitmap = mtmd_cpp.mtmd_bitmap_init(
                w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            text = prompt.replace(image_marker, mtmd_cpp.mtmd_default_marker().decode())
            encoded = text.encode()
            itext = mtmd_cpp.mtmd_input_text(text=encoded, text_len=len(encoded),
                                             add_special=True, parse_special=True)
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(itext), bitmaps, 1)
            if rc != 0:
                raise LlavaEdgeError(f"mtmd_tokenize failed with code {rc} ({last_error(log)})")
            text_ids = []
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    text_ids.append(text_chunk_ids(chunk))
            n_past = llama_cpp.llama_pos(0)
            if mtmd_cpp.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, n_ctx, True,
                                                ctypes.byref(n_past)) != 0:
                raise LlavaEdgeError(f"mtmd could not evaluate the prompt ({last_error(log)})")
            n_prompt = int(n_past.value)
            n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
            greedy, first = [], None
            for _ in range(n_tokens):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1),
                                               shape=(n_vocab,))
                if first is None:
                    first = logits.copy()
                token = int(logits.argmax())
                greedy.append(token)
                one = (llama_cpp.llama_token * 1)(token)
                if llama_cpp.llama_decode(lctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                    raise LlavaEdgeError(f"llama_decode failed ({last_error(log)})")
            return {"text_ids": text_ids, "n_prompt_positions": n_prompt, "greedy": greedy,
                    "first_logits": first}
        finally:
            if chunks:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
            if bitmap:
                mtmd_cpp.mtmd_bitmap_free(bitmap)
            if ctx:
                mtmd_cpp.mtmd_free(ctx)
            if lctx:
                llama_cpp.llama_free(lctx)
            if model:
                llama_cpp.llama_model_free(model)
