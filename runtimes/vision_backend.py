"""Which backend runs a bundle's vision graph on this machine, and why.

When nothing is chosen, the fastest backend that is there:

1. **a TensorRT engine from the bundle** whose sidecar matches this machine's TensorRT
   version and GPU, and whose parity passed at export (fp16 before int8: the closer one);
2. **ONNX Runtime on a GPU provider** (TensorRT, CUDA) with the **fp16** graph, else fp32:
   the int8 / int4 graphs' integer operators (DynamicQuantizeLinear, MatMulInteger,
   MatMulNBits) have no or few CUDA kernels and would bounce between GPU and CPU;
3. **llama.cpp's own vision path on the GPU** (:mod:`~llava_edge.runtimes.vision_mtmd`:
   the bundle's mmproj through libmtmd), where llama.cpp can offload but ONNX Runtime has
   no GPU provider (a llama.cpp-only Jetson set-up), and only where the export measured
   mtmd's image embeddings equal to PyTorch's (min cosine >= :data:`MTMD_GATE`): SigLIP
   towers; CLIP towers are passed over with the reason (llama.cpp issue #25814);
4. **ONNX Runtime on the CPU** with the bundle's default graph (int8 / int4 where exported).

A vision precision, from the caller or a tune profile, picks that ONNX graph (on the
providers asked for); ``providers="cpu"`` goes to step 4; ``backend="tensorrt"`` insists
on an engine and ``backend="mtmd"`` on llama.cpp's path (on the CPU too where llama.cpp
has no GPU), each saying why it cannot run, where ``auto`` falls back and says why in
:attr:`VisionChoice.passed_over` (shown by ``llava-edge doctor BUNDLE``, logged at load).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import Manifest

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "tensorrt", "mtmd")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The least per-token cosine between mtmd's image embeddings and PyTorch's (measured at
# export) for llama.cpp's path to stand in for the ONNX graph: the fp16 graph's own gate
# (export.vision.DEFAULT_GATES), since the mmproj holds F16 weights. Measured: SigLIP
# towers 0.99999+ (random-pixel images too), CLIP towers 0.43 (CLS in the wrong place).
MTMD_GATE = 0.999
# Default of choose_vision's machine parameters: "probe this machine".
PROBE: Any = object()


@dataclass(frozen=True)
class VisionChoice:
    backend: str                    # "tensorrt" (an engine), "onnx" (ONNX Runtime) or
                                    # "mtmd" (the mmproj through llama.cpp)
    file: str                       # the bundle file it runs
    precision: str
    providers: tuple[str, ...] = ()  # ONNX Runtime's providers, in order ("onnx" only)
    reason: str = ""                # why this one
    passed_over: tuple[str, ...] = ()  # faster options not taken, each with why

    @property
    def placement(self) -> str:
        """Where it runs, as ``Timings.vision_on`` says it: TensorRT, CUDA, CPU, ..."""
        if self.backend == "tensorrt":
            return "TensorRT"
        if self.backend == "mtmd":
            return self.providers[0] if self.providers else "llama.cpp mtmd"
        return self.providers[0].removesuffix("ExecutionProvider") if self.providers else ""


def choose_vision(manifest: Manifest, bundle_dir: str | Path, precision: str | None = None,
                  providers: str | list[str] | None = None, backend: str = "auto", *,
                  available_providers: list[str] | None = None,
                  trt_environment: Any = PROBE, llama_gpu: Any = PROBE) -> VisionChoice:
    """The vision backend for ``manifest``'s bundle at ``bundle_dir`` (module docstring).

    ``available_providers`` (ONNX Runtime's, default: probed) and ``trt_environment``
    (a :class:`~llava_edge.export.tensorrt_engine.TrtEnvironment`, or an exception saying
    why there is none; default: probed, only when the bundle holds engines) and
    ``llama_gpu`` (whether llama.cpp can offload to a GPU; default: probed) stand in for
    this machine in tests and reports."""
    from llava_edge.runtimes.vision_onnx import choose_providers

    if backend not in BACKENDS:
        raise LlavaEdgeError(f"vision backend {backend!r} is not one of {', '.join(BACKENDS)}")
    passed_over: list[str] = []
    if backend == "tensorrt" or (backend == "auto" and precision is None
                                 and providers in (None, "auto")):
        engine, why_not = _usable_engine(manifest, Path(bundle_dir), precision,
                                          trt_environment)
        if engine is not None:
            return VisionChoice("tensorrt", engine.file, engine.precision,
                                reason=f"TensorRT engine {engine.file} matches this machine's "
                                       "TensorRT and GPU", passed_over=())
        if backend == "tensorrt":
            raise LlavaEdgeError(f"{bundle_dir}: no TensorRT engine can run here: {why_not}")
        if why_not:
            passed_over.append(f"TensorRT engine: {why_not}")

    chosen = choose_providers(providers, available=available_providers)
    on_gpu = bool(chosen) and chosen[0] in GPU_PROVIDERS
    if backend == "mtmd" or (backend == "auto" and precision is None and not on_gpu
                             and providers in (None, "auto")):
        if llama_gpu is PROBE:
            import llama_cpp

            llama_gpu = bool(llama_cpp.llama_supports_gpu_offload())
        why_not = _mtmd_unusable(manifest)
        if backend == "mtmd":
            if why_not:
                raise LlavaEdgeError(f"{bundle_dir}: llama.cpp's vision path (mtmd) is not "
                                     f"offered for this bundle: {why_not}")
            return _mtmd_choice(manifest, llama_gpu, "as asked", passed_over)
        if llama_gpu and not why_not:
            return _mtmd_choice(manifest, True, "llama.cpp can use the GPU and ONNX Runtime "
                                "has no GPU provider here", passed_over)
        if llama_gpu:
            passed_over.append(f"llama.cpp's vision path (mtmd) on the GPU: {why_not}")
    if precision is not None:
        entry = manifest.vision_entry(precision)
        reason = f"the {entry.precision} graph, as asked"
    elif on_gpu:
        entry = manifest.vision_entry(next(
            (p for p in ("fp16", "fp32") if p in manifest.vision_precisions), None))
        reason = (f"a GPU provider ({chosen[0]}): the {entry.precision} graph runs whole "
                  "on it (integer graphs do not)")
    else:
        entry = manifest.vision_entry()
        reason = f"the bundle's default graph ({entry.precision}) on the CPU"
        if backend == "auto" and providers in (None, "auto"):
            passed_over.append("ONNX Runtime GPU providers: none installed "
                               f"(available: {', '.join(chosen)})")
    return VisionChoice("onnx", entry.file, entry.precision, tuple(chosen), reason,
                        tuple(passed_over))


def _mtmd_unusable(manifest: Manifest) -> str:
    """Why llama.cpp's vision path cannot stand in for the bundle's graph ('' if it can)."""
    if manifest.mmproj is None:
        return "the bundle has no mmproj (llava-edge export --mmproj)"
    if manifest.anyres is not None:
        return ("LLaVA-NeXT: mtmd tiles and packs an image its own way (tiles before the "
                "overview, no unpadding, no newline rows; measured at export)")
    figures = manifest.mmproj_parity()
    if "cosine_min" not in figures:
        return "its image embeddings were not compared with PyTorch's at export"
    if figures["cosine_min"] < MTMD_GATE:
        return (f"its image embeddings differ from PyTorch's (min cosine "
                f"{figures['cosine_min']:.3f} at export, gate {MTMD_GATE}); llama.cpp's CLIP "
                "graph puts CLS after the patches (llama.cpp issue #25814), so only SigLIP "
                "towers match")
    return ""


def _mtmd_choice(manifest: Manifest, on_gpu: bool, why: str,
                 passed_over: list[str]) -> VisionChoice:
    mmproj = manifest.mmproj
    precision = {"F16": "fp16", "F32": "fp32"}.get(mmproj.type or "", (mmproj.type or "").lower())
    where = "GPU (llama.cpp mtmd)" if on_gpu else "CPU (llama.cpp mtmd)"
    cosine = manifest.mmproj_parity()["cosine_min"]
    return VisionChoice("mtmd", mmproj.file, precision, (where,),
                        reason=f"the mmproj through llama.cpp's mtmd on the "
                               f"{'GPU' if on_gpu else 'CPU'}, {why} (min cosine to PyTorch "
                               f"{cosine:.6f} at export)", passed_over=tuple(passed_over))


def _usable_engine(manifest: Manifest, bundle_dir: Path, precision: str | None,
                   environment: Any):
    """(the engine to run, None) or (None, why none can run: '' when the bundle has none)."""
    from llava_edge.export.tensorrt_engine import (EngineMismatchError, EngineSidecarError,
                                                   TensorRTUnavailableError,
                                                   check_engine_sidecar, current_environment)

    if not manifest.tensorrt:
        return None, ("the bundle has none (llava-edge export --trt fp16, on a machine "
                      "with TensorRT and the GPU it is for)")
    engines = [e for e in manifest.tensorrt if precision in (None, e.precision)]
    if not engines:
        return None, f"the bundle has no {precision} engine"
    if environment is PROBE:
        try:
            environment = current_environment()
        except TensorRTUnavailableError as e:
            environment = e
    if isinstance(environment, BaseException):
        return None, str(environment)
    reasons = []
    # fp16 first: closer to fp32 than int8, and exported only where its parity gate passed
    for engine in sorted(engines, key=lambda e: e.precision != "fp16"):
        if engine.passed is False:
            reasons.append(f"{engine.file} failed its parity gate at export")
            continue
        try:
            check_engine_sidecar(bundle_dir / engine.file, environment)
        except (EngineMismatchError, EngineSidecarError) as e:
            reasons.append(str(e))
            continue
        return engine, ""
    return None, "; ".join(reasons)


def open_vision(bundle, choice: VisionChoice, n_threads: int | None = None,
                fallback: bool = False):
    """The encoder for ``choice`` over ``bundle`` (a :class:`~llava_edge.bundle.Bundle`),
    and the choice it ended with. ``fallback``: an engine that will not open (a driver
    problem the sidecar could not foresee, cuda-python missing) gives way to ONNX Runtime,
    said in the choice and the log, instead of failing the load."""
    from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

    if choice.backend == "tensorrt":
        from llava_edge.runtimes.vision_tensorrt import TensorrtVisionEncoder

        try:
            return TensorrtVisionEncoder(bundle.file(choice.file)), choice
        except LlavaEdgeError as e:
            if not fallback:
                raise
            choice = _onnx_instead(bundle, f"TensorRT engine {choice.file}", e)
    if choice.backend == "mtmd":
        from llava_edge.runtimes.vision_mtmd import MtmdVisionEncoder

        m = bundle.manifest
        try:
            encoder = MtmdVisionEncoder(
                bundle.file(choice.file), bundle.file(m.llm_entry().file),
                m.preprocess.image_mean, m.preprocess.image_std, m.preprocess.rescale_factor,
                n_threads=n_threads, use_gpu=choice.placement.startswith("GPU"),
                n_embd=m.image.n_embd)
            return encoder, choice
        except LlavaEdgeError as e:
            if not fallback:
                raise
            choice = _onnx_instead(bundle, f"llama.cpp's mtmd ({choice.file})", e)
    encoder = OnnxVisionEncoder(bundle.file(choice.file), providers=list(choice.providers),
                                n_threads=n_threads)
    return encoder, choice


def _onnx_instead(bundle, what: str, error: Exception) -> VisionChoice:
    """ONNX Runtime's choice for ``bundle``, recording why ``what`` would not open."""
    logger.warning("%s; using ONNX Runtime instead", error)
    plain = choose_vision(bundle.manifest, bundle.path, backend="onnx")
    return dataclasses.replace(plain, passed_over=(f"{what}: {error}", *plain.passed_over))
