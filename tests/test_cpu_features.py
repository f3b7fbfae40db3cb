"""CPU features: the ISA classes that decide whether int8 arithmetic can saturate, and the
runtime's warning for a graph that is unsafe on the CPU it is loaded on."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from llava_edge import cpu_features
from llava_edge.cpu_features import cpu_info, int8_weights_can_saturate, vision_graph_warning
from llava_edge.manifest import VisionGraph
from llava_edge.runtimes import pipeline
from llava_edge.runtimes.pipeline import LlavaEdge

AVX2 = cpu_info("sse4_2 avx avx2 fma f16c", arch="x86_64", cores=2)
AVX512 = cpu_info("avx avx2 avx512f avx512bw", arch="x86_64", cores=2)
AVX512_VNNI = cpu_info("avx avx2 avx512f avx512bw avx512_vnni avx512_bf16", arch="x86_64",
                       cores=2)
ALDER_LAKE = cpu_info("avx avx2 fma avx_vnni", arch="x86_64", cores=2)  # VEX-coded VNNI
SSE = cpu_info("sse4_2", arch="x86_64", cores=2)
ARM = cpu_info("fp asimd asimddp i8mm", arch="aarch64", cores=4)

OLD_INT8 = {"method": "dynamic", "weight_type": "int8", "per_channel": True}
NEW_INT8 = OLD_INT8 | {"reduce_range": True}
OLD_INT4 = {"method": "MatMulNBits", "bits": 4, "attention_qkv": "int8 dynamic (QAttention)"}


@pytest.mark.parametrize("cpu, kernel, saturates, isa_class", [
    (AVX2, "pmaddubsw", True, "x86-64 avx2 (no vnni)"),
    (AVX512, "pmaddubsw", True, "x86-64 avx512 (no vnni)"),
    (AVX512_VNNI, "vnni", False, "x86-64 avx512 vnni"),
    (ALDER_LAKE, "vnni", False, "x86-64 avx2 vnni"),
    (SSE, "widening", False, "x86-64 sse (no vnni)"),
    (ARM, "arm", False, "aarch64 i8mm"),
])
def test_int8_kernel_class(cpu, kernel, saturates, isa_class):
    assert cpu.int8_kernel == kernel
    assert cpu.int8_saturates is saturates
    assert cpu.isa_class == isa_class
    assert json.loads(json.dumps(cpu.to_dict()))["int8_saturates"] is saturates


def test_arm_features_are_named_as_users_know_them():
    assert ARM.has("neon") and ARM.has("dotprod") and ARM.has("i8mm") and not ARM.has("sve")
    assert not cpu_info("fp asimd", arch="aarch64").has("dotprod")


def test_this_machine_is_described():
    here = cpu_info()
    assert here.cores >= 1 and here.arch
    assert here.isa_class and here.int8_kernel in ("vnni", "pmaddubsw", "widening", "arm",
                                                   "other")
    assert cpu_features.this_cpu() == cpu_features.this_cpu()


def test_which_graphs_can_saturate():
    assert int8_weights_can_saturate(OLD_INT8)  # bundles written before 7-bit weights
    assert int8_weights_can_saturate(OLD_INT4)  # int4's q/k/v are int8
    assert not int8_weights_can_saturate(NEW_INT8)
    assert not int8_weights_can_saturate(OLD_INT4 | {"reduce_range": True})
    assert not int8_weights_can_saturate({"method": "dynamic", "weight_type": "uint8"})
    assert not int8_weights_can_saturate({"method": "float16 converter"})
    assert not int8_weights_can_saturate({})


def test_vision_graph_warning_names_the_graph_and_the_fix():
    entry = VisionGraph(precision="int8", file="vision_int8.onnx", method=OLD_INT8)
    message = vision_graph_warning(entry, AVX2)
    assert "vision_int8.onnx" in message and "x86-64 avx2 (no vnni)" in message
    assert "Re-export" in message
    for cpu in (AVX512_VNNI, ALDER_LAKE, SSE, ARM):
        assert vision_graph_warning(entry, cpu) is None
    assert vision_graph_warning(dataclasses.replace(entry, method=NEW_INT8), AVX2) is None


def test_runtime_warns_once_for_an_unsafe_graph(old_int8_bundle, monkeypatch, caplog):
    """A bundle from before 7-bit weights (its manifest's int8 method has no reduce_range)
    loaded on a CPU without VNNI: one warning naming the graph, then none for the same
    graph; the model still loads and answers."""
    bundle = old_int8_bundle
    monkeypatch.setattr(cpu_features, "this_cpu", lambda: AVX2)
    monkeypatch.setattr(pipeline, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="llava_edge.runtimes.pipeline"):
        for _ in range(2):
            with LlavaEdge.load(bundle, vision_precision="int8", n_threads=1) as model:
                assert model.embed(_gray()).shape[0] == model.n_image_tokens
        with LlavaEdge.load(bundle, vision_precision="fp32", n_threads=1):
            pass
    warnings = [r.getMessage() for r in caplog.records if "saturate" in r.getMessage()]
    assert len(warnings) == 1 and "vision_int8.onnx" in warnings[0]

    caplog.clear()
    monkeypatch.setattr(cpu_features, "this_cpu", lambda: AVX512_VNNI)
    monkeypatch.setattr(pipeline, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="llava_edge.runtimes.pipeline"):
        LlavaEdge.load(bundle, vision_precision="int8", n_threads=1).close()
    assert not [r for r in caplog.records if "saturate" in r.getMessage()]


def _gray():
    import numpy as np

    return np.full((32, 32, 3), 128, dtype=np.uint8)
