"""A bundle's vision stage run by llama.cpp itself: the mmproj GGUF through libmtmd.

For machines where llama.cpp has a GPU backend but ONNX Runtime has no GPU provider (a
llama.cpp-only Jetson set-up, a CUDA build of llama-cpp-python beside PyPI's CPU
onnxruntime): the tower and projector then run on the GPU through ggml, with no second
runtime. :mod:`~llava_edge.runtimes.vision_backend` offers it only where the bundle's
export measured it equal to transformers (``parity.llm.mmproj``): SigLIP towers are, CLIP
towers are not (llama.cpp's CLIP graph puts CLS after the patches, its issue #25814).

mtmd takes 8-bit RGB bitmaps and does its own resizing and normalization, so each view
is handed over as the exact uint8 image our preprocessing made of it (the normalized
``pixel_values`` undone and rounded: exact, since they were made from uint8), at the
tower's resolution, which mtmd's resize then leaves as it is; mtmd normalizes with the
mean and std the mmproj stores, the same as the bundle's.
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
from llava_edge.runtimes.llama_cpp_vocab import set_fields
from llava_edge.runtimes.llama_log import capture_llama_log, last_error

MTMD_INPUT_CHUNK_TYPE_IMAGE = 1


def rgb_from_pixel_values(pixel_values: np.ndarray, mean, std,
                          rescale_factor: float = 1 / 255) -> np.ndarray:
    """[3, H, W] normalized float32 -> the [H, W, 3] uint8 image it was made from."""
    x = pixel_values.astype(np.float64) * np.asarray(std)[:, None, None] \
        + np.asarray(mean)[:, None, None]
    u = np.rint(x / rescale_factor)
    return np.ascontiguousarray(np.clip(u, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def text_chunk_ids(chunk) -> list[int]:
    """The token ids of an mtmd text chunk."""
    from llama_cpp import mtmd_cpp

    n = ctypes.c_size_t(0)
    ids = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    return [int(ids[j]) for j in range(n.value)]


class MtmdVisionEncoder:
    """``encode(pixel_values)`` like the ONNX encoder, computed by libmtmd from an mmproj.

    ``llm_gguf`` is the bundle's language model, which mtmd wants for its vocabulary: it is
    opened vocabulary-only (none of its weights). llama.cpp then reports no width, so mtmd
    skips its width check against the mmproj, and the rows' width is taken from the
    GGUF's header instead (``n_embd`` overrides)."""

    def __init__(self, mmproj: str | Path, llm_gguf: str | Path, image_mean=None,
                 image_std=None, rescale_factor: float = 1 / 255, n_threads: int | None = None,
                 use_gpu: bool = True, n_embd: int | None = None, warmup: bool = True,
                 verbose: bool = False):
        from llama_cpp import mtmd_cpp

        check_gguf(mmproj, architectures=("clip",))
        llm_info = check_gguf(llm_gguf)
        self._mtmd = mtmd_cpp
        self.path = Path(mmproj)
        self.mean, self.std, self.rescale = image_mean, image_std, rescale_factor
        self.verbose = verbose
        self.model = self.ctx = None
        # mtmd's graph computes (its warm-up included) on the process's llama.cpp thread,
        # as the LLM's does: one OpenMP pool, and no other AMX code on it
        # (runtimes/compute_thread.py)
        self._compute = for_llama_cpp()
        llama_cpp.llama_backend_init()
        with capture_llama_log(verbose=verbose) as log:
            params = llama_cpp.llama_model_default_params()
            set_fields(params, vocab_only=True)
            self.model = self._compute.run(llama_cpp.llama_model_load_from_file,
                                           str(llm_gguf).encode(), params)
            if not self.model:
                raise LlavaEdgeError(f"{llm_gguf}: llama.cpp could not read the model's "
                                     f"hyperparameters ({last_error(log)})")
            mparams = mtmd_cpp.mtmd_context_params_default()
            # warmup: mtmd encodes a dummy image at load, so that its compute graph and
            # buffers are allocated then, not in the first request (~0.6 s even for `tiny`)
            set_fields(mparams, use_gpu=use_gpu, print_timings=False, warmup=warmup,
                       n_threads=n_threads or (os.cpu_count() or 1))
            self.ctx = self._compute.run(mtmd_cpp.mtmd_init_from_file,
                                         str(self.path).encode(), self.model, mparams)
            if not self.ctx:
                self.close()
                raise LlavaEdgeError(f"{self.path}: llama.cpp's mtmd could not load the mmproj "
                                     f"({last_error(log)})")
        if n_embd is None:
            n_embd = llm_info.metadata.get(f"{llm_info.architecture}.embedding_length")
        self.n_embd = int(n_embd)
        on_gpu = use_gpu and bool(llama_cpp.llama_supports_gpu_offload())
        self.placement = "GPU (llama.cpp mtmd)" if on_gpu else "CPU (llama.cpp mtmd)"
        self.providers = [self.placement]
        self.cancel = None  # a Cancel the pipeline hands over: checked between views

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 (normalized with ``image_mean`` / ``image_std``) ->
        [B, n_image_tokens, n_embd] float32."""
        x = np.asarray(pixel_values)
        if x.ndim == 3:
            x = x[None]
        rows = []
        for view in x:
            if self.cancel is not None:
                self.cancel.check()
            rows.append(self.encode_rgb(rgb_from_pixel_values(view, self.mean, self.std,
                                                              self.rescale)))
        return np.stack(rows)

    def encode_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """The image embeddings mtmd makes of one uint8 [H, W, 3] image (its image chunks'
        rows, in order)."""
        return np.concatenate([c for c in self.chunks(rgb) if isinstance(c, np.ndarray)])

    def chunks(self, rgb: np.ndarray) -> list:
        """What mtmd makes of a prompt that is just the image marker: its chunks in order,
        an image chunk as its embeddings ``[n_tokens, n_embd]``, a text chunk (separators
        mtmd may put between tiles) as its list of token ids."""
        mtmd = self._mtmd
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise LlavaEdgeError(f"image must be uint8 [H, W, 3], got {list(rgb.shape)}")
        h, w, _ = rgb.shape
        bitmap = chunks = None
        with capture_llama_log(verbose=self.verbose) as log:
            try:
                bitmap = mtmd.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(
                    ctypes.POINTER(ctypes.c_uint8)))
                chunks = mtmd.mtmd_input_chunks_init()
                marker = mtmd.mtmd_default_marker()
                text = mtmd.mtmd_input_text(text=marker, text_len=len(marker),
                                            add_special=False, parse_special=True)
                bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
                rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
                if rc != 0:
                    raise LlavaEdgeError(f"mtmd_tokenize failed with code {rc} "
                                         f"({last_error(log)})")
                result: list = []
                for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                    chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                    if mtmd.mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_IMAGE:
                        result.append(text_chunk_ids(chunk))
                        continue
                    if self._compute.run(mtmd.mtmd_encode_chunk, self.ctx, chunk) != 0:
                        raise LlavaEdgeError(f"{self.path}: mtmd could not encode the image "
                                             f"({last_error(log)})")
                    n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                    out = mtmd.mtmd_get_output_embd(self.ctx)
                    result.append(np.ctypeslib.as_array(out, shape=(n_tokens * self.n_embd,))
                                  .reshape(n_tokens, self.n_embd).copy())
                if not any(isinstance(c, np.ndarray) for c in result):
                    raise LlavaEdgeError(f"{self.path}: mtmd produced no image chunk")
                return result
            finally:
                if chunks:
                    mtmd.mtmd_input_chunks_free(chunks)
                if bitmap:
                    mtmd.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
