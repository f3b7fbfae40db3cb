"""What ONNX Runtime's own CPU kernels allow for a vision graph on this machine.

The vision benchmark's fp32 target compares the graph with the machine's best square
GEMM (torch or numpy), and its int8 target with PyTorch eager. Neither says what the
graph could reach with the kernels ONNX Runtime actually has. This times those kernels
alone, one-node graphs at the graph's own shapes:

- every weight MatMul (q/k/v, output projection, MLP up and down, the projector's two
  layers) as an fp32 ``MatMul`` and as the int8 export makes it
  (``quantize_int8_dynamic``: int8 weights per channel, activations quantized on the fly,
  ``DynamicQuantizeMatMul`` once ONNX Runtime has loaded it);
- the attention core (scores, softmax, weighted sum of values) as one fp32
  ``MultiHeadAttention``: ONNX Runtime's CPU ``QAttention`` quantizes only the q/k/v
  projection, so the core runs in fp32 in the int8 graph too.

Each kernel is timed hot, back to back, as it runs inside the graph. Summed over the
layers, they give a floor for each precision: the time the graph would take if nothing
but its GEMMs and attention cores ran, each at its measured speed. Norms, activations and
the patch embedding are left out. It is an estimate, not a strict bound: a kernel alone
can time a few % slower than inside the graph, and the few-millisecond kernels of batch 1
more than that on a VM whose speed drifts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llava_edge.export.onnx_export import make_session
from llava_edge.export.vision_quantize import quantize_int8_dynamic

ATTENTION_CORE = "attention core"


@dataclass(frozen=True)
class Gemm:
    """``count`` matmuls of [m, k] x [k, n] in one image batch through the graph."""

    name: str
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.count


def graph_gemms(spec, batch: int) -> list[Gemm]:
    """The weight matmuls of the vision graph for ``batch`` images (``spec``: a
    :class:`VisionGraphSpec`). ONNX Runtime's fused ``Attention`` computes q, k and v as
    one [d, 3d] matmul, so that is how it is timed."""
    d, inner, layers = spec.hidden_size, spec.intermediate_size, spec.n_layers_run
    tokens, image_tokens = spec.n_positions * batch, spec.n_image_tokens * batch
    projector_in = d * len(spec.hidden_state_indices)
    return [
        Gemm("qkv", tokens, d, 3 * d, layers),
        Gemm("attention output", tokens, d, d, layers),
        Gemm("mlp up", tokens, d, inner, layers),
        Gemm("mlp down", tokens, inner, d, layers),
        Gemm("projector 1", image_tokens, projector_in, spec.n_embd, 1),
        Gemm("projector 2", image_tokens, spec.n_embd, spec.n_embd, 1),
    ]


def _matmul_model(gemm: Gemm, rng: np.random.Generator) -> onnx.ModelProto:
    weight = (rng.standard_normal((gemm.k, gemm.n)) * 0.02).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [gemm.m, gemm.k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [gemm.m, gemm.n])],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _attention_model(batch: int, tokens: int, d: int, heads: int) -> onnx.ModelProto:
    shape = [batch, tokens, d]
    graph = helper.make_graph(
        [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"],
                          domain="com.microsoft", num_heads=heads)], "attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _int8(model: onnx.ModelProto, tmp: Path) -> bytes:
    """``model`` quantized as the int8 export quantizes the vision graph."""
    src, dst = tmp / "fp32.onnx", tmp / "int8.onnx"
    onnx.save(model, str(src))
    quantize_int8_dynamic(src, dst)
    return dst.read_bytes()


@dataclass(frozen=True)
class FloorKernel:
    """One kernel of the floor: ``run()`` computes it once for one image batch; the graph
    runs it ``count`` times (once per layer)."""

    name: str
    precision: str  # "fp32" | "int8"
    count: int
    flops: int  # of all ``count`` runs
    run: Callable[[], object] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"


def floor_kernels(spec, batch: int, threads: int) -> list[FloorKernel]:
    """The graph's GEMMs (fp32 and int8 dynamic) and its attention core (fp32), each ready
    to run alone on random inputs of the graph's shapes for ``batch`` images."""
    rng = np.random.default_rng(0)
    kernels = []
    with tempfile.TemporaryDirectory() as tmp:
        for gemm in graph_gemms(spec, batch):
            model = _matmul_model(gemm, rng)
            feed = {"x": rng.standard_normal((gemm.m, gemm.k)).astype(np.float32)}
            for precision, data in (("fp32", model.SerializeToString()),
                                    ("int8", _int8(model, Path(tmp)))):
                kernels.append(FloorKernel(gemm.name, precision, gemm.count, gemm.flops,
                                           _runner(make_session(data, threads), feed)))
    tokens, d, layers = spec.n_positions, spec.hidden_size, spec.n_layers_run
    q = rng.standard_normal((batch, tokens, d)).astype(np.float32)
    attention = make_session(
        _attention_model(batch, tokens, d, spec.num_heads).SerializeToString(), threads)
    kernels.append(FloorKernel(ATTENTION_CORE, "fp32", layers, 4 * batch * tokens**2 * d * layers,
                               _runner(attention, {"q": q, "k": q, "v": q})))
    return kernels


def _runner(session, feed: dict) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def floor_report(kernels: list[FloorKernel], medians: dict[str, float], batch: int) -> dict:
    """Sum the kernels' median seconds (``medians`` by :attr:`FloorKernel.label`) over the
    layers into the floors: ``fp32_s`` (fp32 GEMMs + attention cores) and ``int8_s`` (int8
    GEMMs + the same fp32 cores), with each kernel's time and rate."""
    rows = {}
    for k in kernels:
        seconds = medians[k.label] * k.count
        row = rows.setdefault(k.name, {"name": k.name, "count": k.count, "gflop": k.flops / 1e9})
        row[f"{k.precision}_s"] = seconds
        row[f"{k.precision}_gflops"] = k.flops / seconds / 1e9
    core = rows.pop(ATTENTION_CORE)
    gemms = list(rows.values())
    gemm_flops = sum(g["gflop"] for g in gemms) * 1e9
    fp32_gemm = sum(g["fp32_s"] for g in gemms)
    int8_gemm = sum(g["int8_s"] for g in gemms)
    return {"batch": batch, "gemms": gemms,
            "attention_core": {"name": f"{ATTENTION_CORE} (fp32 MultiHeadAttention)",
                               "count": core["count"], "gflop": core["gflop"],
                               "s": core["fp32_s"], "gflops": core["fp32_gflops"]},
            "fp32_gemm_s": fp32_gemm, "int8_gemm_s": int8_gemm,
            "fp32_gemm_gflops": gemm_flops / fp32_gemm / 1e9,
            "int8_gemm_gops": gemm_flops / int8_gemm / 1e9,
            "fp32_s": fp32_gemm + core["fp32_s"], "int8_s": int8_gemm + core["fp32_s"]}


def kernel_floor(spec, batch: int, threads: int, timed, warmup: int = 2,
                 repeats: int = 10) -> dict:
    """Build the floor's kernels, time each back to back with ``timed(fn, warmup, repeats)
    -> {"median_s": ...}`` (the benchmark's timer) and sum them up (:func:`floor_report`).
    Each kernel is one short call, so more repeats than a whole graph gets cost little."""
    kernels = floor_kernels(spec, batch, threads)
    medians = {k.label: timed(k.run, warmup, repeats)["median_s"] for k in kernels}
    return floor_report(kernels, medians, batch)
