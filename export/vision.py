"""Export a LLaVA checkpoint's vision tower + projector as parity-gated ONNX graphs.

One call, :func:`export_vision`, does the whole vision half of ``llava-edge export``:

1. load the vision tower and projector (not the LLM) and build the truncated
   :class:`~llava_edge.export.vision_graph.VisionEncoder`;
2. export it to ONNX and fuse it with ONNX Runtime's transformer optimizer (fp32);
3. derive the requested lower precisions (fp16, int8 dynamic or static QDQ, int4);
4. run every variant in ONNX Runtime on a fixed image set and compare it with PyTorch;
   a variant under its gate is not written unless ``allow_degraded`` (and int4 may fall
   back to int8);
5. optionally keep the plain (un-fused, standard-ONNX) fp32 graph, which is what TensorRT
   parses, so engines can be built later on the target device; and optionally build
   TensorRT engines here;
6. move what passed into ``out_dir`` under its final names, all at the end, so that an
   interrupted export leaves no final file behind.

The result (:class:`VisionExportResult`) is JSON-serialisable for the bundle manifest.

LLaVA-NeXT checkpoints export the same per-view graph; their parity is measured on the
anyres views of images of several aspect ratios, plus a packed-features check per
variant, and ``image_newline.npy`` is written with the graphs (:mod:`anyres_export`).

Longer than most modules here (about 570 lines) on purpose: the six steps are one
transaction over a staging folder (the gates, the int4 fallback and the final move share
its state), and the argument checks that run before any work, and the move that ends it,
sit beside it so that the whole contract of a vision export reads in one file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llava_edge.cpu_features import cpu_info
from llava_edge.errors import LlavaEdgeError
from llava_edge.export import (anyres_export, onnx_export, tensorrt_engine, vision_parity,
                               vision_quantize)
from llava_edge.export.open_checkpoint import check_supported
from llava_edge.export.vision_graph import load_vision
from llava_edge.heap import release_freed_memory
from llava_edge.progress import StageProgress

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int4")
#: Minimum mean per-token cosine similarity to PyTorch for a variant to be written (for
#: LLaVA-NeXT, of its packed rows too).
DEFAULT_GATES: Mapping[str, float] = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99, "int4": 0.98}
INT8_METHODS = ("auto", "dynamic", "static")
ENGINE_PRECISIONS = tensorrt_engine.PRECISIONS
PARITY_BATCH = 4
# Calibration images drawn when static int8 is asked for without a calib_dir: a different
# seed from the parity images, so that int8 is not judged on the images it was fitted to.
_SYNTHETIC_CALIBRATION_SEED = 1



class VisionExportError(LlavaEdgeError):
    """Bad arguments to :func:`export_vision`, or an output it would clobber."""


@dataclass
class VariantResult:
    """One ONNX variant: what was built, how close it is to PyTorch, whether it was written."""

    precision: str
    files: list[str]  # names inside out_dir (graph first, then external data if any)
    written: bool
    gate: float
    passed: bool
    parity: dict | None  # ParityFigures.to_dict(); LLaVA-NeXT: and "packed" (packed_parity)
    method: dict = field(default_factory=dict)  # how it was made (quantizer settings)
    note: str | None = None
    fallback: str | None = None  # the precision written instead (int4 -> int8)


@dataclass
class EngineResult:
    """One TensorRT engine (or why there is none), with its parity against PyTorch."""

    precision: str
    files: list[str]  # engine, then its JSON sidecar
    written: bool
    gate: float
    passed: bool = False
    parity: dict | None = None
    sidecar: dict | None = None
    error: str | None = None  # why no engine was built (TensorRT or GPU missing)
    note: str | None = None


@dataclass
class VisionExportResult:
    """Everything the bundle manifest needs to know about the vision graph(s)."""

    checkpoint: str
    out_dir: str
    vision_kind: str
    image_size: int
    n_image_tokens: int  # per view: per image for LLaVA-1.5, per tile for LLaVA-NeXT
    n_embd: int
    graph: dict  # VisionGraphSpec.to_dict()
    preprocess: dict  # PreprocessRecipe.to_dict(): what the runtime does to an image
    exporter: str
    opset: int
    fused_ops: dict
    parity_images: list[str]
    variants: list[VariantResult]
    engines: list[EngineResult]
    versions: dict
    plain: VariantResult | None = None  # vision_fp32_plain.onnx, when asked for
    # The CPU the parity figures were measured on (CpuInfo.to_dict()): int8 arithmetic
    # differs between CPU classes, so a figure means little without it.
    measured_on: dict = field(default_factory=dict)
    # LLaVA-NeXT: the manifest's anyres section (AnyresSpec's fields); its newline_file
    # was written next to the graphs. None for LLaVA-1.5.
    anyres: dict | None = None

    def variant(self, precision: str) -> VariantResult:
        """The result for ``precision`` (KeyError if it was not requested)."""
        for v in self.variants:
            if v.precision == precision:
                return v
        raise KeyError(precision)

    def to_dict(self) -> dict:
        return asdict(self)


def graph_name(precision: str) -> str:
    """The final file name of the ``precision`` graph: ``vision_<precision>.onnx``."""
    return f"vision_{precision}.onnx"


#: The un-fused fp32 graph (standard ONNX ops only): the input for TensorRT on the device.
PLAIN_GRAPH_NAME = "vision_fp32_plain.onnx"


def engine_name(precision: str) -> str:
    """The final file name of a TensorRT engine: ``vision_<precision>.engine``."""
    return f"vision_{precision}.engine"


def export_vision(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    precisions: Sequence[str] = ("fp32",),
    calib_dir: str | Path | None = None,
    gates: Mapping[str, float] | None = None,
    allow_degraded: bool = False,
    int4_fallback: bool = False,
    max_batch: int = 8,
    progress: StageProgress | None = None,
    *,
    int8_method: str = "auto",
    tensorrt: Sequence[str] = (),
    timing_cache: str | Path | None = None,
    n_parity_images: int = 8,
    int4: vision_quantize.Int4Config = vision_quantize.Int4Config(),
    plain_graph: bool = False,
    overwrite: bool = False,
    external_data: bool | None = None,
) -> VisionExportResult:
    """Export the vision tower + projector of ``checkpoint_dir`` into ``out_dir``.

    ``precisions``: any of fp32, fp16, int8, int4 (graphs ``vision_<p>.onnx``).
    ``calib_dir``: a folder of images; they join the parity set and, for int8, calibrate
    static quantization. ``int8_method``: 'dynamic', 'static' (QDQ, calibrated), or
    'auto' (static when ``calib_dir`` is given). ``gates`` overrides
    :data:`DEFAULT_GATES` per precision (minimum mean per-token cosine to PyTorch).
    A variant under its gate is not written unless ``allow_degraded``; with
    ``int4_fallback`` a failing int4 is replaced by int8 (and the result says so).
    ``tensorrt``: engine precisions (fp16, int8) to build with batch profile
    1..``max_batch``; if TensorRT or a GPU is missing the engine entry records why and
    the ONNX export goes on. ``plain_graph`` also writes ``vision_fp32_plain.onnx``, the
    fp32 graph before ONNX Runtime's fusions (parity-gated like fp32), from which
    :func:`~llava_edge.export.tensorrt_engine.build_trt_engine` can build engines on the
    target GPU later. ``external_data``: force (True/False) or choose by size
    (None) whether tensors go to ``<graph>.onnx.data``.
    ``progress(step, done, total)`` is called before each step.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    precisions = _check_precisions(precisions)
    engines = _check_engines(tensorrt)
    gates = _check_gates(gates)
    if int8_method not in INT8_METHODS:
        raise VisionExportError(
            f"int8_method {int8_method!r} is not one of {', '.join(INT8_METHODS)}")
    if int8_method == "auto":
        int8_method = "static" if calib_dir is not None else "dynamic"
    if not isinstance(max_batch, int) or max_batch < 1:
        raise VisionExportError(f"max_batch must be a positive integer, got {max_batch!r}")
    if n_parity_images < 1:
        raise VisionExportError(f"n_parity_images must be at least 1, got {n_parity_images}")
    calib_images = vision_parity.folder_images(calib_dir) if calib_dir is not None else []
    tiled = check_supported(checkpoint_dir)["model_type"] == "llava_next"
    _check_out_dir(out_dir, precisions, engines, int4_fallback, plain_graph, overwrite, tiled)

    fallback_steps = 2 if int4_fallback and "int4" in precisions and "int8" not in precisions else 0
    steps = _Steps(progress, total=5 + 2 * len(precisions) + fallback_steps + len(engines)
                   + 2 * plain_graph)
    steps("loading vision tower and projector")
    loaded = load_vision(checkpoint_dir)
    spec, encoder = loaded.spec, loaded.encoder()
    tiling = anyres_export.Tiling.of(loaded) if loaded.is_next else None

    def views(images: list) -> tuple[np.ndarray, list[int]]:
        """The graph's inputs for ``images`` and how many each image has: one view per
        image from the HF processor (LLaVA-1.5), or each image's anyres views."""
        if tiling is None:
            return vision_parity.preprocess(loaded.processor, images), [1] * len(images)
        return tiling.views(images)

    steps("computing PyTorch reference embeddings")
    named = vision_parity.synthetic_images(n_parity_images) + (
        vision_parity.tiling_images() if tiling else []) + [
        (f"calib/{name}", image) for name, image in calib_images]
    images = [image for _, image in named]
    pixels, counts = views(images)
    reference = vision_parity.torch_embeds(encoder, pixels, PARITY_BATCH)
    packed_reference = anyres_export.hf_packed_features(loaded, images) if tiling else None

    def measure(candidate: np.ndarray) -> dict:
        """Figures of a graph's outputs for ``pixels``: per view and (LLaVA-NeXT) packed."""
        figures = vision_parity.compare(reference, candidate).to_dict()
        if tiling is not None:  # figures per view, of len(images) images
            figures |= {"n_views": figures["n_images"], "n_images": len(images)}
            figures["packed"] = anyres_export.packed_parity(
                packed_reference, tiling.pack(images, candidate, counts, loaded.image_newline))
        return figures

    may_build_int8 = "int8" in precisions or (int4_fallback and "int4" in precisions)
    needs_calibration = "int8" in engines or (int8_method == "static" and may_build_int8)
    calibration = (_calibration_pixels(lambda ims: views(ims)[0], calib_images, n_parity_images)
                   if needs_calibration else None)
    parity_batch = min(PARITY_BATCH, max_batch)

    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vision-export-", dir=out_dir))
    finished = False
    try:
        steps("exporting to ONNX")
        plain = staging / PLAIN_GRAPH_NAME
        exporter = onnx_export.export_to_onnx(encoder, plain, external_data=external_data)
        steps("fusing with the ONNX Runtime transformer optimizer")
        fused_fp32 = staging / graph_name("fp32")
        fused_ops = onnx_export.optimize_onnx(plain, fused_fp32, spec.num_heads, spec.hidden_size,
                                              external_data=external_data)
        metadata = _graph_metadata(spec)

        def judge(precision: str, path: Path, method: dict) -> VariantResult:
            """Check the graph at ``path`` and measure it against PyTorch."""
            onnx_export.set_metadata(path, metadata | {"llava_edge.precision": precision})
            onnx_export.check_onnx(path)
            steps(f"parity of {precision}")
            session = onnx_export.make_session(path)
            figures = measure(vision_parity.onnx_embeds(session, pixels, parity_batch))
            del session  # frees the graph's weights before the next variant is built
            # ...and hands the freed heap back: glibc keeps what ONNX's protobuf copies and
            # ORT's session used, and the export's later stages would start on top of it
            release_freed_memory()
            return VariantResult(
                precision=precision, files=[p.name for p in onnx_export.graph_files(path)],
                written=False, gate=gates[precision],
                passed=_meets(figures, gates[precision]), parity=figures, method=method)

        def build(precision: str) -> VariantResult:
            steps(f"building {precision}")
            path = staging / graph_name(precision)
            method = _build_variant(precision, fused_fp32, path, int8_method, calibration,
                                    int4, external_data)
            return judge(precision, path, method)

        results = {p: build(p) for p in precisions}
        if int4_fallback and "int4" in results and not results["int4"].passed:
            _fall_back_to_int8(results, build)
        plain_result = None
        if plain_graph:
            steps("checking the plain fp32 graph")
            plain_result = judge("fp32", plain, {"method": "plain: no ONNX Runtime fusions "
                                                           "(standard ONNX, for TensorRT)"})
        for result in [*results.values(), *filter(None, [plain_result])]:
            _decide(result, allow_degraded)

        engine_results = []
        for precision in engines:
            steps(f"building TensorRT {precision} engine")
            engine_results.append(_build_engine(
                precision, plain, staging / engine_name(precision), max_batch, calibration,
                timing_cache, gates[precision]))
            engine = engine_results[-1]
            if engine.sidecar is not None:
                engine.parity = measure(tensorrt_engine.run_engine(
                    staging / engine_name(precision), pixels, parity_batch))
                engine.passed = _meets(engine.parity, engine.gate)
                _decide(engine, allow_degraded)

        steps("writing files")
        variants = [results[p] for p in PRECISIONS if p in results]
        extra = []
        if tiling is not None:  # the runtime's packing needs it whichever graph it runs
            anyres_export.save_newline(staging / anyres_export.NEWLINE_FILE,
                                       loaded.image_newline)
            extra.append(anyres_export.NEWLINE_FILE)
        _commit(staging, out_dir, variants + ([plain_result] if plain_result else []),
                engine_results, overwrite, extra)
        finished = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not finished and created_out_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
    steps.finish()

    return VisionExportResult(
        checkpoint=str(checkpoint_dir), out_dir=str(out_dir), vision_kind=spec.kind,
        image_size=spec.image_size, n_image_tokens=spec.n_image_tokens, n_embd=spec.n_embd,
        graph=spec.to_dict(), preprocess=preprocess_recipe(loaded.processor, checkpoint_dir), exporter=exporter,
        opset=onnx_export.OPSET, fused_ops=fused_ops, parity_images=[name for name, _ in named],
        variants=variants, engines=engine_results, versions=tool_versions(), plain=plain_result,
        measured_on=cpu_info().to_dict(),
        anyres=asdict(tiling.manifest_spec()) if tiling is not None else None,
    )


# --------------------------------------------------------------------------------------
# Argument checks (all before any heavy work)


def _check_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(precisions, str):
        precisions = (precisions,)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise VisionExportError(
            f"unknown precision {unknown[0]!r} (choose from {', '.join(PRECISIONS)})")
    if not precisions:
        raise VisionExportError("no precision requested (choose from fp32, fp16, int8, int4)")
    return tuple(p for p in PRECISIONS if p in precisions)


def _check_engines(engines: Sequence[str]) -> tuple[str, ...]:
    if isinstance(engines, str):
        engines = (engines,)
    unknown = [p for p in engines if p not in ENGINE_PRECISIONS]
    if unknown:
        raise VisionExportError(f"unknown TensorRT precision {unknown[0]!r} "
                                f"(choose from {', '.join(ENGINE_PRECISIONS)})")
    return tuple(p for p in ENGINE_PRECISIONS if p in engines)


def _check_gates(gates: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_GATES)
    for precision, gate in (gates or {}).items():
        if precision not in PRECISIONS:
            raise VisionExportError(f"gate for unknown precision {precision!r} "
                                    f"(choose from {', '.join(PRECISIONS)})")
        if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not -1 <= gate <= 1.0001:
            raise VisionExportError(
                f"gate for {precision} must be a cosine in [-1, 1], got {gate!r}")
        merged[precision] = float(gate)
    return merged


def _final_names(precisions, engines, int4_fallback: bool, plain_graph: bool,
                 tiled: bool) -> list[str]:
    names = [PLAIN_GRAPH_NAME, onnx_export.data_path(PLAIN_GRAPH_NAME).name] if plain_graph else []
    names += [anyres_export.NEWLINE_FILE] if tiled else []
    graphs = set(precisions) | ({"int8"} if int4_fallback and "int4" in precisions else set())
    for p in graphs:
        names += [graph_name(p), onnx_export.data_path(graph_name(p)).name]
    for p in engines:
        names += [engine_name(p), tensorrt_engine.sidecar_path(engine_name(p)).name]
    return names


def _check_out_dir(out_dir: Path, precisions, engines, int4_fallback: bool, plain_graph: bool,
                   overwrite: bool, tiled: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise VisionExportError(f"output {out_dir} exists and is not a folder")
    if overwrite or not out_dir.is_dir():
        return
    clash = [n for n in _final_names(precisions, engines, int4_fallback, plain_graph, tiled)
             if (out_dir / n).exists()]
    if clash:
        raise VisionExportError(
            f"{out_dir / clash[0]} already exists (pass overwrite=True to replace it)")


# --------------------------------------------------------------------------------------
# Building and judging variants


class _Steps:
    """Counts steps and reports them to the caller's progress function."""

    def __init__(self, progress: StageProgress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, step: str) -> None:
        logger.info("vision export: %s", step)
        if self.progress:
            self.progress(step, self.done, self.total)
        self.done += 1

    def finish(self) -> None:
        if self.progress:
            self.progress("done", self.total, self.total)


def _build_variant(precision: str, fused_fp32: Path, out: Path, int8_method: str,
                   calibration: list[np.ndarray] | None, int4: vision_quantize.Int4Config,
                   external_data: bool | None) -> dict:
    """Write the ``precision`` graph derived from the fused fp32 graph; return how it was
    made."""
    if precision == "fp32":
        return {"method": "ONNX Runtime transformer optimizer", "model_type":
                onnx_export.OPTIMIZER_MODEL_TYPE}
    if precision == "fp16":
        return vision_quantize.to_fp16(fused_fp32, out, external_data=external_data)
    if precision == "int8":
        if int8_method == "static":
            return vision_quantize.quantize_int8_static(fused_fp32, out, calibration,
                                                        external_data)
        return vision_quantize.quantize_int8_dynamic(fused_fp32, out, external_data)
    return vision_quantize.quantize_int4(fused_fp32, out, int4, external_data)


def _meets(figures: dict, gate: float) -> bool:
    """Whether measured figures meet a gate: per view and, when measured, packed."""
    return all(f["mean_cosine"] >= gate for f in (figures, figures.get("packed")) if f)


def _fall_back_to_int8(results: dict[str, VariantResult],
                       build: Callable[[str], VariantResult]) -> None:
    """int4 missed its gate: make sure int8 exists (built now if it was not asked for) and
    mark int4 as replaced by it."""
    if "int8" not in results:
        results["int8"] = build("int8")
    int4, int8 = results["int4"], results["int8"]
    int4.fallback = "int8"
    int4.note = (f"int4 mean cosine {int4.parity['mean_cosine']:.5f} is under its gate "
                 f"{int4.gate}; fell back to int8"
                 + ("" if int8.passed else " (which misses its own gate too)"))
    logger.warning("vision export: %s", int4.note)


def _decide(result: VariantResult | EngineResult, allow_degraded: bool) -> None:
    """Set ``written`` (and a note) from the gate, ``allow_degraded`` and any fallback."""
    figures = result.parity
    if result.passed:
        result.written = True
        return
    packed = (figures.get("packed") or {}).get("mean_cosine")
    shortfall = (f"{result.precision} mean cosine {figures['mean_cosine']:.6f}"
                 + (f" (packed rows {packed:.6f})" if packed is not None else "")
                 + f" is under its gate {result.gate}")
    if allow_degraded:
        result.written = True
        result.note = result.note or f"{shortfall}; written anyway (allow_degraded)"
        logger.warning("vision export: %s", result.note)
    elif getattr(result, "fallback", None) is None:
        result.note = f"{shortfall}; not written"
        if isinstance(result, VariantResult) and result.method.get("method") == "static":
            result.note += (" (static int8 is only as good as its calibration images: pass "
                            "more representative ones, or use int8_method='dynamic')")
        logger.warning("vision export: %s", result.note)


def _calibration_pixels(views: Callable[[list], np.ndarray], calib_images,
                        n_synthetic: int) -> list[np.ndarray]:
    """Calibration batches for static int8: the views (``views(images)``: the graph's
    inputs) of the calib_dir images, else of synthetic ones."""
    images = [image for _, image in calib_images]
    if not images:
        logger.warning("vision export: static int8 without calib_dir calibrates on synthetic "
                       "images; pass a folder of real images for representative ranges")
        images = [image for _, image in vision_parity.synthetic_images(
            max(n_synthetic, 8), seed=_SYNTHETIC_CALIBRATION_SEED)]
    return list(vision_parity.batches(views(images), PARITY_BATCH))


def _build_engine(precision: str, plain_onnx: Path, out: Path, max_batch: int,
                  calibration: list[np.ndarray] | None, timing_cache, gate: float) -> EngineResult:
    """Build one engine from the plain graph; TensorRT or a GPU being absent is recorded
    in the result (and logged), not raised, so the ONNX variants are still written."""
    try:
        sidecar = tensorrt_engine.build_trt_engine(
            plain_onnx, out, precision=precision, max_batch=max_batch,
            calib_images=calibration if precision == "int8" else None, timing_cache=timing_cache)
    except tensorrt_engine.TensorRTUnavailableError as exc:
        logger.warning("vision export: TensorRT %s engine skipped: %s", precision, exc)
        return EngineResult(precision=precision, files=[], written=False, gate=gate, error=str(exc))
    return EngineResult(precision=precision, written=False, gate=gate, sidecar=sidecar,
                        files=[out.name, tensorrt_engine.sidecar_path(out).name])


def _commit(staging: Path, out_dir: Path, variants: list[VariantResult],
            engines: list[EngineResult], overwrite: bool, extra: list[str] = ()) -> None:
    """Move every file to be written (and the ``extra`` ones) from ``staging`` into
    ``out_dir``; on any failure, remove the ones already moved, so the export is
    all-or-nothing."""
    moves = [(staging / name, out_dir / name) for v in variants if v.written for name in v.files]
    moves += [(staging / name, out_dir / name) for e in engines if e.written for name in e.files]
    moves += [(staging / name, out_dir / name) for name in extra]
    done: list[Path] = []
    try:
        if overwrite:
            # A variant this run did not write must not survive from an earlier run.
            for v in variants:
                if not v.written:
                    graph = v.files[0]
                    for name in (graph, onnx_export.data_path(graph).name):
                        (out_dir / name).unlink(missing_ok=True)
        for src, dst in moves:
            os.replace(src, dst)
            done.append(dst)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------
# Descriptions for the manifest


def _graph_metadata(spec) -> dict[str, str]:
    return {
        "llava_edge.vision_kind": spec.kind,
        "llava_edge.image_size": str(spec.image_size),
        "llava_edge.n_image_tokens": str(spec.n_image_tokens),
        "llava_edge.n_embd": str(spec.n_embd),
        "llava_edge.feature_layers": ",".join(map(str, spec.feature_layers)),
        "llava_edge.select_strategy": spec.select_strategy,
    }


def preprocess_recipe(processor, checkpoint_dir: str | Path) -> dict:
    """The image preprocessing of the checkpoint as the runtime applies it
    (:class:`~llava_edge.runtimes.preprocess.PreprocessRecipe`, JSON-ready): its HF image
    processor, after a pad to square when the checkpoint was trained with one; for
    LLaVA-NeXT, what each view gets (checked to cut tiles of the tower's size)."""
    from llava_edge.checkpoint_info import image_aspect_ratio, read_json
    from llava_edge.runtimes.anyres import recipe_from_hf
    from llava_edge.runtimes.preprocess import PreprocessRecipe

    image_processor = getattr(processor, "image_processor", processor)
    config = read_json(Path(checkpoint_dir) / "config.json", "config.json")
    if config.get("model_type") == "llava_next":
        return recipe_from_hf(image_processor.to_dict()).to_dict()
    return PreprocessRecipe.from_hf(
        image_processor.to_dict(), pad_to_square=image_aspect_ratio(config) == "pad").to_dict()


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the graphs."""
    from importlib.metadata import PackageNotFoundError, version

    from llava_edge import __version__

    versions = {"llava-edge": __version__}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
