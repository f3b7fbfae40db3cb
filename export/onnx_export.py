"""Torch -> ONNX for the vision graph, then ONNX Runtime's transformer optimizer.

The exporter is torch's dynamo-based ``torch.onnx.export`` (the default in torch 2.13):
with eager attention its graph fuses fully in ONNX Runtime's optimizer (one ``Attention``,
``SkipLayerNormalization`` and ``QuickGelu``/``FastGelu`` per layer, ``BiasGelu`` in the
projector), the same fusions as the TorchScript exporter, but with none of the
Shape/Gather/Unsqueeze chains the TorchScript exporter leaves around every reshape, so
the plain graph is also the cleaner input for TensorRT. SDPA attention is *not* used: its
exported pattern is not recognised by the ``Attention`` fusion in either exporter. If the
dynamo exporter fails (an unsupported torch or transformers change), the TorchScript
exporter is tried, and the result records which one produced the graph.

Graphs whose weights exceed what one protobuf can hold (2 GiB) are saved with their
tensors in ``<name>.onnx.data`` next to ``<name>.onnx``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import onnx

from llava_edge.atomic_dir import atomic_path
from llava_edge.errors import LlavaEdgeError

logger = logging.getLogger(__name__)

# The dynamo exporter's native opset in torch 2.13 (asking for 17 makes it down-convert).
OPSET = 18
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeds"
# Protobuf refuses messages over 2 GiB; switch to external data with room to spare for
# the graph itself.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)
# ORT's optimizer model type whose attention fusion matches CLIP and SigLIP encoder layers.
OPTIMIZER_MODEL_TYPE = "clip"
FUSED_OPS = ("Attention", "SkipLayerNormalization", "LayerNormalization", "QuickGelu",
             "FastGelu", "Gelu", "BiasGelu")


class OnnxExportError(LlavaEdgeError):
    """The vision graph could not be exported to ONNX or does not check."""


def export_to_onnx(encoder, path: str | Path, *, opset: int = OPSET,
                   external_data: bool | None = None) -> str:
    """Export ``encoder`` (a :class:`VisionEncoder`) to ``path``; return the exporter used
    (``"dynamo"`` or ``"torchscript"``). The batch dimension is dynamic."""
    import torch

    spec = encoder.spec
    example = torch.zeros(2, 3, spec.image_size, spec.image_size)
    try:
        model = _export_dynamo(encoder, example, opset)
        exporter = "dynamo"
    except Exception as exc:  # the fallback exists precisely for exporter failures
        logger.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter",
                       type(exc).__name__, exc)
        model = _export_torchscript(encoder, example, opset)
        exporter = "torchscript"
    save_onnx(model, path, external_data=external_data)
    return exporter


@contextlib.contextmanager
def _quiet_exporter():
    """Silence exporter chatter that says nothing about this graph: torch warns once per
    torchvision op it cannot register when torchvision is absent (it is on CPU set-ups),
    and torch.export raises a FutureWarning from its own internals."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        registration.setLevel(level)


def _export_dynamo(encoder, example, opset: int) -> onnx.ModelProto:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    with _quiet_exporter():
        program = torch.onnx.export(
            encoder, (example,), None, dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixel_values": {0: batch}}, optimize=True,
        )
    return program.model_proto


def _export_torchscript(encoder, example, opset: int) -> onnx.ModelProto:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vision.onnx"
        torch.onnx.export(
            encoder, (example,), str(out), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return onnx.load(str(out), load_external_data=True)


def optimize_onnx(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int,
                  external_data: bool | None = None) -> dict[str, int]:
    """Fuse attention / LayerNorm / GELU with ONNX Runtime's transformer optimizer; write
    the result to ``dst`` and return the count of each fused operator."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    # opt_level=0: only the Python fusions. Level 1+ would bake in ORT's own graph
    # rewrites, which ORT re-applies at session start anyway and which can be specific
    # to the machine that ran them.
    # No shape inference: its only use here is a same-shape check before fusing Add +
    # LayerNorm, and ORT's symbolic shape inference copies the whole model (weights
    # included) several times: SigLIP-so400m's 1.6 GB graph took the optimizer to a 10.0 GB
    # peak with it, 5.4 GB without, the fused graph node for node the same (as on the
    # tiny CLIP / SigLIP / NeXT graphs, tests/test_export_vision.py); the parity
    # gate that follows would catch a wrong fusion.
    options = FusionOptions(OPTIMIZER_MODEL_TYPE)
    options.enable_shape_inference = False
    optimized = optimizer.optimize_model(
        str(src), model_type=OPTIMIZER_MODEL_TYPE, num_heads=num_heads,
        hidden_size=hidden_size, opt_level=0, use_gpu=False, optimization_options=options)
    save_onnx(optimized.model, dst, external_data=external_data)
    return op_counts(optimized.model, FUSED_OPS)


def op_counts(model: onnx.ModelProto, ops=None) -> dict[str, int]:
    """How many nodes of each op type the graph has (only ``ops`` when given)."""
    counts = Counter(node.op_type for node in model.graph.node)
    if ops is None:
        return dict(counts)
    return {op: counts.get(op, 0) for op in ops}


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the graph's initializers (inline or external)."""
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            total += int(info.get("length", 0))
        else:
            total += len(init.raw_data) or init.ByteSize()
    return total


def save_onnx(model: onnx.ModelProto, path: str | Path,
              external_data: bool | None = None) -> list[Path]:
    """Write ``model`` to ``path``; tensors go to ``<path>.data`` when ``external_data``
    is true, or (None) when they would not fit in one protobuf. Returns the files written."""
    path = Path(path)
    data = data_path(path)
    _import_used_domains(model)
    _topological_sort(model)
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if data.exists():
        data.unlink()
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _import_used_domains(model: onnx.ModelProto) -> None:
    """Declare the contrib-op domain (``com.microsoft``, version 1) when fused nodes use it:
    ORT's fusions add such nodes but leave the opset import to whoever saves the model."""
    declared = {opset.domain for opset in model.opset_import}
    for domain in sorted({node.domain for node in model.graph.node} - declared - {"", "ai.onnx"}):
        model.opset_import.add(domain=domain, version=1)


def _topological_sort(model: onnx.ModelProto) -> None:
    """Put nodes in dependency order (converters append Cast nodes at the end; the ONNX
    checker requires sorted graphs)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel.graph_topological_sort(model.graph, is_deterministic=True)


def data_path(path: str | Path) -> Path:
    """Where the external tensors of the graph at ``path`` live."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def graph_files(path: str | Path) -> list[Path]:
    """The graph file and, if it has one, its external data file."""
    path = Path(path)
    data = data_path(path)
    return [path, data] if data.exists() else [path]


def check_onnx(path: str | Path) -> None:
    """Run ``onnx.checker`` on the file (path-based, so external data and >2 GB work)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{path}: ONNX checker failed: {exc}") from None


def set_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Add ``metadata_props`` to the graph at ``path`` (keeps its external data as is)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def make_session(path: str | Path | bytes, threads: int = 0):
    """A CPU ``onnxruntime.InferenceSession`` for the graph at ``path`` (or serialized in
    ``bytes``); ``threads`` 0: ORT's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
