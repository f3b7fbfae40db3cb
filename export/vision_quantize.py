"""Lower-precision variants of the optimized fp32 vision graph, all with ONNX Runtime tools.

- fp16: onnxruntime's float16 converter; weights and compute in fp16, ``pixel_values`` in
  and ``image_embeds`` out stay fp32 (``keep_io_types``), ops in the block list stay fp32.
- int8 dynamic: ``quantize_dynamic``, int8 weights per output channel, activations
  quantized on the fly (``Attention`` -> ``QAttention``, ``MatMul`` -> ``MatMulInteger``,
  which ONNX Runtime fuses into ``DynamicQuantizeMatMul`` when it loads the graph).
- int8 static: ``quantize_static`` in QDQ format, activation ranges calibrated on images.
- int4: weight-only, block-wise ``MatMulNBits`` (``MatMulNBitsQuantizer``); the q/k/v
  weight packed inside the fused ``Attention`` is out of its reach and goes int8.

Each function reads one graph file and writes another; none changes its input.

**Weights are 7-bit** wherever an int8 weight meets a uint8 activation (``reduce_range``).
ONNX Runtime's u8 x s8 integer GEMM (MLAS) on x86 without VNNI (AVX2, AVX-512BW) multiplies
with ``vpmaddubsw``, which adds each pair of products into an int16 *with saturation*:
with full-range weights a pair reaches 255 * 128 * 2 = 65,280, far past 32,767, and the
result is silently clipped (measured on an AVX2-only EPYC: tiny-qwen2 int8 mean cosine
0.949, under its gate). With weights in [-64, 64] the largest pair is 255 * 64 * 2 =
32,640 <= 32,767, so no CPU can saturate: VNNI (``vpdpbusd``) and the SSE / Arm kernels
accumulate in int32 anyway. The kernel is the same, so the speed is too; the cost is one
bit of weight precision (see :data:`MAX_WEIGHT_MAGNITUDE` and the README's figures).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from llava_edge.export.onnx_export import (EXTERNAL_DATA_THRESHOLD, INPUT_NAME, data_path,
                                           save_onnx)

# Ops kept fp32 in the fp16 graph on top of onnxruntime's default block list (the ops
# without fp16 kernels). None are needed for CLIP/SigLIP after fusion: the precision-
# sensitive parts (LayerNorm statistics, the attention softmax) run inside ORT's fused
# SkipLayerNormalization / Attention kernels, which accumulate in fp32 even on fp16
# tensors. Measured on CLIP ViT-L/14-336 (random weights): mean cosine 0.999999 to fp32
# PyTorch. Pass e.g. ("Conv",) to keep the patch embedding in fp32 as well.
FP16_EXTRA_BLOCK_LIST: tuple[str, ...] = ()

#: The largest |int8 weight| any quantizer here writes (ONNX Runtime's reduce_range
#: range for int8 is [-64, 64]) and the largest uint8 activation; their doubled product
#: must fit the int16 that ``vpmaddubsw`` sums a pair of products into.
MAX_WEIGHT_MAGNITUDE = 64
MAX_ACTIVATION = 255
INT16_MAX = 32767


@dataclass(frozen=True)
class Int4Config:
    """Block-wise 4-bit weights for every constant-weight MatMul, int8 for attention q/k/v.

    ORT's fused ``Attention`` holds q/k/v as one packed weight that ``MatMulNBits`` cannot
    take, so it gets int8 (dynamic quantization, ``QAttention``) instead of staying fp32;
    the output projection, MLP and projector are 4-bit. Measured (random weights, mean
    cosine to PyTorch / file size):

    - SigLIP-so400m dims: q/k/v fp32 0.9834 / 604 MB; q/k/v int8 0.9834 / 297 MB; all
      4-bit from the un-fused graph 0.9752 / 261 MB (block 16: 0.9808 / 316 MB).
    - CLIP ViT-L/14-336: q/k/v fp32 0.9905 / 418 MB; all 4-bit 0.9900 / 186 MB.

    Asymmetric blocks (a zero point per block) hold the gate where symmetric ones do not:
    at block 32, SigLIP-so400m 0.9786 -> 0.9834, tiny-qwen2 0.9845 -> 0.9881.
    """

    block_size: int = 32
    symmetric: bool = False
    # MatMulNBits compute type: 4 quantizes activations to int8 in the CPU kernel (ORT's
    # fast path on x86 with VNNI), 0 keeps fp32 activations. Parity was the same for both.
    accuracy_level: int = 4
    attention_int8: bool = True
    # 7-bit q/k/v weights in the int8 Attention (see the module docstring); False only to
    # measure the old full-range scheme.
    reduce_range: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def to_fp16(src: str | Path, dst: str | Path,
            extra_block_list: Iterable[str] = FP16_EXTRA_BLOCK_LIST,
            external_data: bool | None = None) -> dict:
    """fp16 weights and compute with fp32 graph inputs/outputs; returns the settings used."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    block_list = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(extra_block_list))
    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=block_list)
    save_onnx(model.model, dst, external_data=external_data)
    return {"method": "float16 converter", "keep_io_types": True,
            "op_block_list_extra": sorted(extra_block_list)}


def quantize_int8_dynamic(src: str | Path, dst: str | Path,
                          external_data: bool | None = None, reduce_range: bool = True,
                          weight_type: str = "int8") -> dict:
    """int8 weights (per channel), activations quantized at run time.

    ``reduce_range`` (7-bit weights) and ``weight_type`` ("int8", or "uint8" for ONNX
    Runtime's u8 x u8 kernel) exist to measure the alternatives (``benchmarks/
    int8_schemes.py``); the defaults are the scheme that cannot saturate.

    MatMul and the fused Attention are quantized; the patch-embedding Conv is not (it
    reads raw pixels and is under 0.2% of the FLOPs; keeping it fp32 raised the mean
    cosine on the tiny presets from 0.99979 to 0.99985 (CLIP) and 0.99953 to 0.99978
    (SigLIP))."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in ("int8", "uint8"):
        raise ValueError(f"weight_type {weight_type!r} is not int8 or uint8")
    qtype = QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8
    external = _external(src, external_data)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(src), str(out), weight_type=qtype,
                         per_channel=True, reduce_range=reduce_range,
                         op_types_to_quantize=["MatMul", "Attention"],
                         use_external_data_format=external)
        _resave(out, dst, external_data)
    return {"method": "dynamic", "weight_type": weight_type, "per_channel": True,
            "reduce_range": reduce_range, "op_types": ["MatMul", "Attention"]}


class _ArrayReader(CalibrationDataReader):
    """Feeds calibration batches of ``pixel_values`` to ``quantize_static``."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}



def quantize_int8_static(src: str | Path, dst: str | Path, calibration: Iterable[np.ndarray],
                         external_data: bool | None = None) -> dict:
    """int8 QDQ graph: weights per channel, activation ranges from ``calibration`` batches
    of ``pixel_values`` (MinMax calibration).

    Only MatMul is quantized. The fused ``Attention`` has no QDQ form; quantizing
    LayerNorm/GELU inputs costs accuracy for no CPU speed-up; and the patch-embedding Conv
    reads raw pixels, whose range calibration pins down worst: keeping it fp32 raised the
    mean cosine on the tiny presets (SigLIP 0.9889 -> 0.9901 calibrated on 3 noise images,
    0.9989 -> 0.9993 on 8 shape scenes)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reader = _ArrayReader(calibration)
    external = _external(src, external_data)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(src), str(out), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            use_external_data_format=external,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        _resave(out, dst, external_data)
    return {"method": "static", "format": "QDQ", "calibration": "MinMax",
            "activation_type": "uint8", "weight_type": "int8", "per_channel": True,
            "reduce_range": True, "op_types": ["MatMul"]}


def quantize_int4(src: str | Path, dst: str | Path, config: Int4Config = Int4Config(),
                  external_data: bool | None = None) -> dict:
    """4-bit block-wise weights (``MatMulNBits``) for every MatMul with a constant weight;
    with ``config.attention_int8``, the fused Attention's q/k/v weight in int8."""
    with _quiet_quantizer():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(src))
        quantizer = MatMulNBitsQuantizer(
            model, bits=4, block_size=config.block_size, is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer.process()
    method = {"method": "MatMulNBits", "bits": 4} | config.to_dict()
    has_attention = any(n.op_type == "Attention" for n in quantizer.model.model.graph.node)
    if not (config.attention_int8 and has_attention):
        save_onnx(quantizer.model.model, dst, external_data=external_data)
        return method
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        nbits, out = Path(tmp) / "int4.onnx", Path(tmp) / "int4_qattention.onnx"
        save_onnx(quantizer.model.model, nbits, external_data=external_data)
        quantize_dynamic(str(nbits), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=config.reduce_range, op_types_to_quantize=["Attention"],
                         use_external_data_format=_external(nbits, external_data))
        _resave(out, dst, external_data)
    return method | {"attention_qkv": "int8 dynamic (QAttention)"}


def _drop_preprocess_advice(record: logging.LogRecord) -> bool:
    # ONNX Runtime's quantizers advise running their shape-inference pre-processing;
    # the graphs here are already shape-inferred and fused by its transformer optimizer.
    # (quantize_dynamic: "Please consider to run pre-processing before quantization",
    # quantize_static: "Please consider pre-processing before quantization").
    return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer():
    """Keep ONNX Runtime's quantizers from taking over the host's logging:
    ``matmul_nbits_quantizer`` calls ``logging.basicConfig(level=INFO)`` on import (a root
    handler that prints every INFO line of every library from then on) and logs one INFO
    line per node; ``quantize_dynamic`` / ``quantize_static`` log their pre-processing
    advice through the root logger, which installs a root handler too."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quantizer_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    quantizer_level = quantizer_logger.level
    quantizer_logger.setLevel(logging.WARNING)
    root.addFilter(_drop_preprocess_advice)
    try:
        yield
    finally:
        root.removeFilter(_drop_preprocess_advice)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        quantizer_logger.setLevel(quantizer_level)


def _external(src: str | Path, external_data: bool | None) -> bool:
    """Whether a quantizer should write external data for a graph the size of ``src``
    (the quantizers' own outputs are re-saved by :func:`save_onnx` anyway)."""
    if external_data is not None:
        return external_data
    src = Path(src)
    size = sum(p.stat().st_size for p in (src, data_path(src)) if p.exists())
    return data_path(src).exists() or size > EXTERNAL_DATA_THRESHOLD


def _resave(tmp_out: Path, dst: str | Path, external_data: bool | None) -> None:
    """Re-save a quantizer's output under ``dst`` with our external-data naming."""
    save_onnx(onnx.load(str(tmp_out)), dst, external_data=external_data)
