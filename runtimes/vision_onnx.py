"""The vision graph run by ONNX Runtime: ``pixel_values`` [B, 3, H, W] -> ``image_embeds``
[B, n_image_tokens, n_embd], whatever precision the graph was exported in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llava_edge.errors import LlavaEdgeError
from llava_edge.heap import release_freed_memory

if TYPE_CHECKING:
    from llava_edge.runtimes.cancel import Cancel

# Tried in this order when providers="auto": TensorRT, then CUDA, then the CPU.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: str | list[str] | None = "auto",
                     available: list[str] | None = None) -> list[str]:
    """The execution providers to use: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"tensorrt"``
    or explicit ONNX Runtime provider names; ``available``: what ONNX Runtime offers
    (default: asked)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if requested in (None, "auto"):
        return [p for p in AUTO_PROVIDERS if p in available]
    short = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
    names = [short.get(r.lower(), r) for r in ([requested] if isinstance(requested, str)
                                               else requested)]
    missing = [n for n in names if n not in available]
    if missing:
        raise LlavaEdgeError(f"ONNX Runtime provider(s) {', '.join(missing)} not available "
                             f"here (available: {', '.join(available)}); for CUDA/TensorRT "
                             "install onnxruntime-gpu (pip install 'llava-edge[gpu]')")
    return names if "CPUExecutionProvider" in names else names + ["CPUExecutionProvider"]


class OnnxVisionEncoder:
    """One ONNX Runtime session over a vision graph.

    ``cancel``: while set to a :class:`~llava_edge.runtimes.cancel.Cancel`, its signal
    stops a running :meth:`encode` (ONNX Runtime's ``RunOptions.terminate``, seen between
    graph nodes) with :class:`~llava_edge.errors.Cancelled`."""

    cancel: "Cancel | None" = None

    def __init__(self, path: str | Path, providers: str | list[str] | None = "auto",
                 n_threads: int | None = None, spin: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads keep a core busy after each run; the LLM runs right after the
        # vision graph on the same cores, so by default they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=choose_providers(providers))
        except Exception as e:  # onnxruntime raises its own exception types
            raise LlavaEdgeError(f"{path}: ONNX Runtime cannot load this graph ({e})") from None
        # Building the session parses the whole file and prepacks the int8/int4 weights;
        # the parse buffers and the unpacked copies are freed but glibc keeps them: ~220 MB
        # of tinyllava's int8 graph (302 MB) stays resident beside the session otherwise.
        release_freed_memory()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 -> [B, n_image_tokens, n_embd] float32."""
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        cancel = self.cancel
        if cancel is None:
            (out,) = self.session.run([self.output_name], {self.input_name: x})
        else:
            (out,) = self._run_cancellable(x, cancel)
        return out.astype(np.float32, copy=False)

    def _run_cancellable(self, x: np.ndarray, cancel: "Cancel") -> list:
        import onnxruntime as ort

        options = ort.RunOptions()

        def terminate() -> None:  # called by the cancelling thread
            options.terminate = True

        with cancel.on_cancel(terminate):
            try:
                return self.session.run([self.output_name], {self.input_name: x}, options)
            except Exception:  # ORT's own type ("Exiting due to terminate flag ...")
                cancel.check()
                raise
