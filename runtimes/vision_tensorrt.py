"""The vision graph as a TensorRT engine from the bundle: ``pixel_values`` [B, 3, H, W] ->
``image_embeds`` [B, n_image_tokens, n_embd] float32, as :class:`OnnxVisionEncoder` gives.

The engine was built at export (``llava-edge export --trt fp16``) with a batch
profile 1..max_batch; more views than that run in chunks. Buffers for the largest batch
are allocated once, at load, so a request allocates nothing on the GPU. The engine's
sidecar is checked against this machine before it is opened (by
:func:`~llava_edge.runtimes.vision_backend.choose_vision`): TensorRT engines are only
valid for the TensorRT version and GPU they were built with.

No torch: the GPU memory comes from :class:`~llava_edge.runtimes.cuda_memory.CudaMemory`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.tensorrt_engine import INPUT_NAME, import_tensorrt


class EngineLoadError(LlavaEdgeError):
    """TensorRT could not open or run an engine."""


class TensorrtVisionEncoder:
    """One TensorRT execution context over an engine file."""

    cancel = None  # an engine runs in one call: a cancel is seen after it, between stages

    def __init__(self, path: str | Path, memory=None):
        trt = import_tensorrt()
        if memory is None:
            from llava_edge.runtimes.cuda_memory import CudaMemory

            memory = CudaMemory()
        self.path, self.memory = Path(path), memory
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._trt_logger).deserialize_cuda_engine(
            self.path.read_bytes())
        if self.engine is None:
            raise EngineLoadError(f"{self.path}: TensorRT could not deserialize the engine "
                                  "(see the TensorRT log above); rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if INPUT_NAME not in names or len(outputs) != 1:
            raise EngineLoadError(f"{self.path}: expected input {INPUT_NAME!r} and one output, "
                                  f"the engine has {names}")
        self.output_name = outputs[0]
        half = self.engine.get_tensor_dtype(self.output_name) == trt.DataType.HALF
        self.out_dtype = np.float16 if half else np.float32
        _, _, largest = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.max_batch, self.view_shape = int(largest[0]), tuple(int(d) for d in largest[1:])
        self.context.set_input_shape(INPUT_NAME, tuple(int(d) for d in largest))
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        self._in = self.memory.alloc(int(np.prod(largest)) * 4)
        self._out = self.memory.alloc(int(np.prod(out_shape)) * np.dtype(self.out_dtype).itemsize)
        self.providers = ["TensorRT"]  # where it runs, as Timings.vision_on says it
        self.placement = "TensorRT"

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] float32 -> [B, n_image_tokens, n_embd] float32."""
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[1:]) != self.view_shape:
            raise EngineLoadError(f"{self.path}: the engine takes views of "
                                  f"{list(self.view_shape)}, got {list(x.shape[1:])}")
        return np.concatenate([self._run(x[i:i + self.max_batch])
                               for i in range(0, len(x), self.max_batch)])

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        self.context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), self.out_dtype)
        self.memory.to_device(self._in, chunk)
        self.context.set_tensor_address(INPUT_NAME, self._in)
        self.context.set_tensor_address(self.output_name, self._out)
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise EngineLoadError(f"{self.path}: TensorRT execution failed")
        self.memory.to_host(out, self._out)
        self.memory.synchronize()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        if getattr(self, "_in", None) is not None:
            self.memory.free(self._in)
            self.memory.free(self._out)
            self._in = self._out = None
            self.memory.close()
