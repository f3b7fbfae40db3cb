"""TensorRT engines for the vision graph, and the sidecar that keeps them honest.

An engine is only valid for the TensorRT version and the GPU it was built with, so every
engine ``vision_fp16.engine`` gets a sidecar ``vision_fp16.engine.json`` recording the
TensorRT version, the GPU's name and compute capability, the precision and the batch
profile. :func:`check_engine_sidecar` refuses an engine built for something else with a
message saying what differs, rather than letting TensorRT fail obscurely (or silently
run a mismatched plan).

Written against the TensorRT 10 Python API. ``tensorrt`` is imported only when an engine
is built or checked: without it (or without a CUDA GPU) those calls raise a
:class:`TensorRTUnavailableError` and everything else in the export works. Nothing here
imports torch at module level, so a runtime may use :func:`check_engine_sidecar`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llava_edge import __version__
from llava_edge.atomic_dir import write_file_atomic, write_json
from llava_edge.bundle import sha256_file
from llava_edge.errors import LlavaEdgeError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")
SIDECAR_VERSION = 1
INPUT_NAME = "pixel_values"
DEFAULT_WORKSPACE_BYTES = 4 * 1024**3


class TensorRTUnavailableError(LlavaEdgeError):
    """TensorRT engines cannot be built or run on this machine."""


class TensorRTNotInstalledError(TensorRTUnavailableError):
    """The ``tensorrt`` Python package is not installed."""


class NoCudaGpuError(TensorRTUnavailableError):
    """No CUDA GPU is visible."""


class EngineBuildError(LlavaEdgeError):
    """TensorRT could not parse the graph or build the engine."""


class EngineSidecarError(LlavaEdgeError):
    """An engine's JSON sidecar is missing or unreadable."""


class EngineMismatchError(LlavaEdgeError):
    """An engine was built for another TensorRT version or GPU than this machine's."""


@dataclass(frozen=True)
class TrtEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7", "9.0", ...


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile of the engine's ``pixel_values`` input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTNotInstalledError` saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTNotInstalledError(
            "TensorRT is not installed: pip install 'llava-edge[tensorrt]' on an x86-64 "
            "machine with an NVIDIA driver (on Jetson it comes with JetPack as "
            "python3-libnvinfer); ONNX Runtime variants do not need it") from None
    return tensorrt


def detect_gpu() -> tuple[str, str]:
    """``(name, compute capability)`` of CUDA device 0, from ``nvidia-smi`` (no import: the
    runtime asks this at load), else torch if it has CUDA (a Jetson without nvidia-smi);
    :class:`NoCudaGpuError` when neither finds one."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            name, cap = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
            return name, cap
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    raise NoCudaGpuError("no CUDA GPU is visible (nvidia-smi and torch.cuda found none): "
                         "TensorRT engines need an NVIDIA GPU")


def current_environment() -> TrtEnvironment:
    """This machine's TensorRT version and GPU (raises if either is missing)."""
    trt = import_tensorrt()
    name, cap = detect_gpu()
    return TrtEnvironment(tensorrt_version=trt.__version__, gpu_name=name, compute_capability=cap)


def sidecar_path(engine_path: str | Path) -> Path:
    """``<engine>.json`` next to the engine."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def build_trt_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    max_batch: int = 8,
    calib_images: np.ndarray | Sequence[np.ndarray] | None = None,
    timing_cache: str | Path | None = None,
    opt_batch: int | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> dict:
    """Build a serialized TensorRT engine from the plain (un-fused) ONNX vision graph.

    ``precision`` 'fp16' sets the FP16 builder flag; 'int8' sets INT8 (and FP16 for the
    layers TensorRT keeps out of int8) with an entropy calibrator fed ``calib_images``:
    preprocessed ``pixel_values`` as one [N, 3, H, W] array or a sequence of them. The
    profile covers batch 1..``max_batch`` (optimised for ``opt_batch``, default 1).
    ``timing_cache`` is read if it exists and written back after the build, so rebuilds
    on the same GPU are fast. The engine and its JSON sidecar appear only when both are
    complete. Returns the sidecar's content.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if precision not in PRECISIONS:
        raise LlavaEdgeError(f"TensorRT precision {precision!r} is not supported "
                             f"(choose {', '.join(PRECISIONS)})")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise LlavaEdgeError(f"max_batch must be a positive integer, got {max_batch!r}")
    opt_batch = 1 if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise LlavaEdgeError(f"opt_batch {opt_batch} is outside 1..{max_batch}")
    if not onnx_path.is_file():
        raise LlavaEdgeError(f"ONNX graph {onnx_path} does not exist")
    calib = _calibration_array(calib_images) if precision == "int8" else None
    _refuse_contrib_ops(onnx_path)

    trt = import_tensorrt()
    gpu_name, capability = detect_gpu()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    # parse_from_file (not parse) so that external data next to the graph is found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    shape = _input_shape(network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    chw = tuple(shape[1:])
    batch_profile = BatchProfile(INPUT_NAME, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
    profile.set_shape(INPUT_NAME, batch_profile.min, batch_profile.opt, batch_profile.max)
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    # Kept in a local until the build returns: TensorRT holds the calibrator only weakly.
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_calibrator(trt, calib, min(max_batch, 8))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} "
                               f"(precision {precision}); see the TensorRT log above")
    engine_bytes = bytes(memoryview(serialized))
    if trt.Runtime(trt_logger).deserialize_cuda_engine(engine_bytes) is None:
        raise EngineBuildError(f"the engine built from {onnx_path} does not deserialize")

    sidecar = {
        "format_version": SIDECAR_VERSION,
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu_name,
        "compute_capability": capability,
        "precision": precision,
        "profile": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in asdict(batch_profile).items()},
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "created_by": f"llava-edge {__version__}",
    }
    _write_engine_and_sidecar(out_path, engine_bytes, sidecar)
    if cache_path:
        write_file_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return sidecar


def check_engine_sidecar(path: str | Path, environment: TrtEnvironment | None = None) -> dict:
    """Read the sidecar of the engine at ``path`` and check it against ``environment``
    (default: this machine). Returns the sidecar; raises :class:`EngineSidecarError` when
    it is missing or unreadable, :class:`EngineMismatchError` naming what differs."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise EngineSidecarError(f"{path}: engine sidecar {side.name} is missing; rebuild the "
                                 "engine with llava-edge so that it records its TensorRT and GPU")
    try:
        sidecar = json.loads(side.read_text())
        built = TrtEnvironment(str(sidecar["tensorrt_version"]), str(sidecar["gpu_name"]),
                               str(sidecar["compute_capability"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineSidecarError(f"{side}: not a valid engine sidecar ({exc})") from None
    env = environment or current_environment()
    differences = []
    if built.tensorrt_version != env.tensorrt_version:
        differences.append(f"TensorRT {built.tensorrt_version} (this machine has "
                           f"{env.tensorrt_version})")
    if built.compute_capability != env.compute_capability:
        differences.append(f"compute capability {built.compute_capability} (this GPU is "
                           f"{env.compute_capability})")
    if built.gpu_name != env.gpu_name:
        differences.append(f"GPU {built.gpu_name!r} (this GPU is {env.gpu_name!r})")
    if differences:
        raise EngineMismatchError(
            f"{path}: engine was built for {', '.join(differences)}; rebuild it on this "
            "machine (TensorRT engines are specific to the TensorRT version and GPU)")
    return sidecar


# --------------------------------------------------------------------------------------


def _calibration_array(calib_images) -> np.ndarray:
    if calib_images is None:
        raise LlavaEdgeError("int8 TensorRT engines need calibration images (calib_images)")
    arrays = [calib_images] if isinstance(calib_images, np.ndarray) else list(calib_images)
    if not arrays:
        raise LlavaEdgeError("int8 TensorRT engines need calibration images; none were given")
    batch = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1, *np.shape(a)[-3:])
                            for a in arrays])
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise LlavaEdgeError(
            f"calibration images must be pixel_values [N, 3, H, W], got {batch.shape}")
    return np.ascontiguousarray(batch)


def _refuse_contrib_ops(onnx_path: Path) -> None:
    """TensorRT parses standard ONNX only: name the first ONNX Runtime contrib op."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise EngineBuildError(
                f"{onnx_path}: node {node.name!r} is {node.domain}.{node.op_type}, an ONNX "
                "Runtime operator TensorRT cannot parse; build engines from the plain fp32 "
                "graph vision_fp32_plain.onnx (export_vision(..., plain_graph=True)), not "
                "from an ONNX Runtime-optimized variant")


def _input_shape(network) -> tuple[int, ...]:
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name == INPUT_NAME:
            return tuple(tensor.shape)
    raise EngineBuildError(f"the graph has no input named {INPUT_NAME!r}")


def _make_calibrator(trt, pixels: np.ndarray, batch_size: int):
    """An entropy calibrator that copies ``pixels`` batch by batch into GPU memory."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise NoCudaGpuError("int8 TensorRT calibration holds its batches in GPU memory "
                             "through PyTorch, which has no CUDA device here")

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.device = torch.empty((batch_size, *pixels.shape[1:]), dtype=torch.float32,
                                      device="cuda")

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self.index + batch_size > len(pixels):
                return None
            chunk = torch.from_numpy(pixels[self.index:self.index + batch_size])
            self.device.copy_(chunk)
            self.index += batch_size
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            return None  # always calibrate on the images given

        def write_calibration_cache(self, cache):
            pass  # nothing to keep: the engine holds the scales

    if len(pixels) < batch_size:
        # Too few images for one full batch: repeat them (calibration needs full batches).
        reps = -(-batch_size // len(pixels))
        pixels = np.ascontiguousarray(np.concatenate([pixels] * reps)[:batch_size])
    return _Calibrator()


def _write_engine_and_sidecar(out_path: Path, engine: bytes, sidecar: dict) -> None:
    """Engine first, then its sidecar; if the sidecar fails, the engine goes too."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out_path, engine)
    try:
        write_json(sidecar_path(out_path), sidecar)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise


def run_engine(engine_path: str | Path, pixel_values: np.ndarray,
               batch_size: int = 4) -> np.ndarray:
    """Run the engine at ``engine_path`` on ``pixel_values`` [N, 3, H, W]; return
    ``image_embeds`` as float32 (used for the engine's parity check at export)."""
    trt = import_tensorrt()
    detect_gpu()
    import torch

    trt_logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(trt_logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineBuildError(f"{engine_path}: TensorRT could not deserialize the engine")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    half = engine.get_tensor_dtype(output) == trt.DataType.HALF
    out_dtype = torch.float16 if half else torch.float32
    stream = torch.cuda.current_stream()
    results = []
    for start in range(0, len(pixel_values), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(pixel_values[start:start + batch_size],
                                                  dtype=np.float32)).cuda()
        context.set_input_shape(INPUT_NAME, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(output)), dtype=out_dtype, device="cuda")
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(output, y.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError(f"{engine_path}: TensorRT execution failed")
        stream.synchronize()
        results.append(y.float().cpu().numpy())
    return np.concatenate(results)
