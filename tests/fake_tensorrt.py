"""Stand-ins for what a machine without an NVIDIA GPU lacks, so that the runtime's TensorRT
path runs here from the bundle down to the engine's execution context:

- :func:`fake_tensorrt_module`: a ``tensorrt`` module with the TensorRT 10 calls the
  runtime makes (Runtime.deserialize_cuda_engine, the engine's I/O tensor queries and
  optimization profile, an execution context with set_input_shape / set_tensor_address /
  execute_async_v3). Its "engine" file holds an ONNX graph, which the context runs with
  ONNX Runtime, reading and writing the device addresses it was given;
- :class:`HostMemory`: CudaMemory's five calls over host memory, so those addresses are
  real and the copies in and out really happen.

What is not exercised here: TensorRT's own deserialization and kernels, CUDA memory and
streams. The GPU check (scripts/gpu_check.sh) runs those where a GPU is at hand.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np


class HostMemory:
    """CudaMemory's interface over host buffers (addresses are host pointers)."""

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}
        self.stream_handle = 0
        self.closed = False

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(nbytes, 1), np.uint8)
        self.buffers[buf.ctypes.data] = buf
        return buf.ctypes.data

    def free(self, address: int) -> None:
        del self.buffers[address]

    def to_device(self, address: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._check(address, host.nbytes)
        ctypes.memmove(address, host.ctypes.data, host.nbytes)

    def to_host(self, host: np.ndarray, address: int) -> None:
        self._check(address, host.nbytes)
        ctypes.memmove(host.ctypes.data, address, host.nbytes)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def _check(self, address: int, nbytes: int) -> None:
        assert address in self.buffers, "copy to an address that was not allocated"
        assert nbytes <= self.buffers[address].nbytes, "copy larger than the buffer"


def fake_tensorrt_module(max_batch: int = 2, half_output: bool = False,
                         version: str = "10.9.0") -> types.ModuleType:
    """A ``tensorrt`` module whose engines are ONNX graphs run by ONNX Runtime on the CPU;
    ``half_output``: the engine's output is fp16, as an fp16 engine's is."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            assert name == "pixel_values"
            assert 1 <= shape[0] <= max_batch, f"batch {shape[0]} outside the profile"
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name == "pixel_values":
                return self.shapes[name]
            return (self.shapes["pixel_values"][0], *self.engine.out_tail)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            shape = self.shapes["pixel_values"]
            n = int(np.prod(shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(
                self.addresses["pixel_values"])).reshape(shape).copy()
            (y,) = self.engine.session.run(None, {"pixel_values": x})
            y = np.ascontiguousarray(y.astype(np.float16 if half_output else np.float32))
            ctypes.memmove(self.addresses[self.engine.output], y.ctypes.data, y.nbytes)
            self.engine.runs.append(shape[0])
            return True

    class Engine:
        def __init__(self, onnx_bytes: bytes):
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
            self.view = tuple(inp.shape[1:])
            self.output = out.name
            probe = self.session.run(None, {"pixel_values": np.zeros((1, *self.view),
                                                                      np.float32)})[0]
            self.out_tail = probe.shape[1:]
            self.num_io_tensors = 2
            self.runs: list[int] = []

        def get_tensor_name(self, i):
            return ("pixel_values", self.output)[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "pixel_values" else "OUTPUT"

        def get_tensor_dtype(self, name):
            return "HALF" if half_output and name == self.output else "FLOAT"

        def get_tensor_profile_shape(self, name, profile):
            return ((1, *self.view), (1, *self.view), (max_batch, *self.view))

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                engine = Engine(data)
            except Exception:  # noqa: BLE001 - TensorRT returns None for a bad plan
                return None
            trt.engines.append(engine)
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.engines = []  # every engine opened, for the test to look at
    return trt
