"""TensorRT engines: the missing-TensorRT/GPU errors and the sidecar check run everywhere;
building and running engines runs only where `tensorrt` and a CUDA GPU are present."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from llava_edge.errors import LlavaEdgeError
from llava_edge.export import tensorrt_engine as te
from llava_edge.export.vision import DEFAULT_GATES, export_vision


def _has_trt_and_gpu() -> bool:
    try:
        te.current_environment()
    except te.TensorRTUnavailableError:
        return False
    return True


needs_trt_gpu = pytest.mark.skipif(not _has_trt_and_gpu(),
                                   reason="needs the tensorrt package and a CUDA GPU")


@pytest.fixture
def without_tensorrt(monkeypatch):
    """Make `import tensorrt` fail whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def without_gpu(monkeypatch):
    """Hide every CUDA GPU from detect_gpu (torch.cuda and nvidia-smi)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(te.shutil, "which", lambda name: None)


@pytest.fixture(scope="module")
def plain_graph(tmp_path_factory, tiny_checkpoint):
    """The un-fused fp32 graph of `tiny` (standard ONNX ops only, what TensorRT parses)."""
    from llava_edge.export.vision_graph import load_vision
    from llava_edge.export.onnx_export import export_to_onnx

    path = tmp_path_factory.mktemp("plain") / "plain_fp32.onnx"
    export_to_onnx(load_vision(tiny_checkpoint).encoder(), path)
    return path


def test_missing_tensorrt_is_a_clear_error(without_tensorrt, tmp_path):
    onnx_path = tmp_path / "g.onnx"
    _tiny_standard_graph(onnx_path)
    with pytest.raises(te.TensorRTNotInstalledError, match="TensorRT is not installed"):
        te.build_trt_engine(onnx_path, tmp_path / "e.engine")
    assert not (tmp_path / "e.engine").exists()
    assert issubclass(te.TensorRTNotInstalledError, LlavaEdgeError)


def test_missing_gpu_is_a_clear_error(without_gpu):
    with pytest.raises(te.NoCudaGpuError, match="no CUDA GPU"):
        te.detect_gpu()


@pytest.mark.slow
def test_export_goes_on_without_tensorrt(without_tensorrt, tiny_checkpoint, tmp_path):
    result = export_vision(tiny_checkpoint, tmp_path / "out", precisions=("fp32",),
                           tensorrt=("fp16",), n_parity_images=2)
    engine = result.engines[0]
    assert engine.precision == "fp16" and not engine.written and engine.files == []
    assert "TensorRT is not installed" in engine.error
    assert result.variant("fp32").written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vision_fp32.onnx"]


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp8"}, "TensorRT precision 'fp8' is not supported"),
    ({"max_batch": 0}, "max_batch must be a positive integer"),
    ({"max_batch": 4, "opt_batch": 5}, "opt_batch 5 is outside 1..4"),
    ({"precision": "int8"}, "int8 TensorRT engines need calibration images"),
    ({"precision": "int8", "calib_images": np.zeros((2, 3, 5))},
     r"calibration images must be pixel_values \[N, 3, H, W\]"),
])
def test_bad_build_arguments(tmp_path, kwargs, message):
    onnx_path = tmp_path / "g.onnx"
    _tiny_standard_graph(onnx_path)
    with pytest.raises(LlavaEdgeError, match=message):
        te.build_trt_engine(onnx_path, tmp_path / "e.engine", **kwargs)


def test_missing_graph_is_named(tmp_path):
    with pytest.raises(LlavaEdgeError, match="nowhere.onnx does not exist"):
        te.build_trt_engine(tmp_path / "nowhere.onnx", tmp_path / "e.engine")


def test_fused_graph_is_refused_naming_the_contrib_op(tmp_path):
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("FastGelu", ["pixel_values"], ["y"], domain="com.microsoft",
                          name="gelu0")],
        "g", [helper.make_tensor_value_info("pixel_values", 1, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", 1, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    import onnx

    onnx.save(model, str(tmp_path / "fused.onnx"))
    with pytest.raises(te.EngineBuildError, match="'gelu0' is com.microsoft.FastGelu"):
        te.build_trt_engine(tmp_path / "fused.onnx", tmp_path / "e.engine")


# --------------------------------------------------------------------------------------
# The sidecar check, for real (no TensorRT needed: the environment is passed in)

BUILT = te.TrtEnvironment(tensorrt_version="10.3.0", gpu_name="NVIDIA Jetson Orin Nano",
                          compute_capability="8.7")


def _engine_with_sidecar(tmp_path, env=BUILT):
    path = tmp_path / "vision_fp16.engine"
    sidecar = {"format_version": 1, "tensorrt_version": env.tensorrt_version,
               "gpu_name": env.gpu_name, "compute_capability": env.compute_capability,
               "precision": "fp16",
               "profile": {"input": "pixel_values", "min": [1, 3, 64, 64],
                           "opt": [1, 3, 64, 64], "max": [8, 3, 64, 64]}}
    te._write_engine_and_sidecar(path, b"not a real plan", sidecar)
    return path


def test_sidecar_is_written_next_to_the_engine(tmp_path):
    path = _engine_with_sidecar(tmp_path)
    assert te.sidecar_path(path).name == "vision_fp16.engine.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision_fp16.engine",
                                                          "vision_fp16.engine.json"]


def test_matching_engine_passes(tmp_path):
    sidecar = te.check_engine_sidecar(_engine_with_sidecar(tmp_path), BUILT)
    assert sidecar["precision"] == "fp16" and sidecar["profile"]["max"][0] == 8


@pytest.mark.parametrize("env, message", [
    (te.TrtEnvironment("10.7.0", BUILT.gpu_name, "8.7"),
     r"built for TensorRT 10\.3\.0 \(this machine has 10\.7\.0\)"),
    (te.TrtEnvironment("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"),
     r"compute capability 8\.7 \(this GPU is 9\.0\), GPU 'NVIDIA Jetson Orin Nano'"),
    (te.TrtEnvironment("10.3.0", "NVIDIA Jetson AGX Orin", "8.7"),
     r"GPU 'NVIDIA Jetson Orin Nano' \(this GPU is 'NVIDIA Jetson AGX Orin'\)"),
])
def test_mismatched_engine_is_refused(tmp_path, env, message):
    path = _engine_with_sidecar(tmp_path)
    with pytest.raises(te.EngineMismatchError, match=message):
        te.check_engine_sidecar(path, env)


def test_missing_or_corrupt_sidecar_is_refused(tmp_path):
    path = _engine_with_sidecar(tmp_path)
    te.sidecar_path(path).write_text("{not json")
    with pytest.raises(te.EngineSidecarError, match="not a valid engine sidecar"):
        te.check_engine_sidecar(path, BUILT)
    te.sidecar_path(path).write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(te.EngineSidecarError, match="tensorrt_version"):
        te.check_engine_sidecar(path, BUILT)
    te.sidecar_path(path).unlink()
    with pytest.raises(te.EngineSidecarError, match="vision_fp16.engine.json is missing"):
        te.check_engine_sidecar(path, BUILT)


def test_checking_without_tensorrt_says_so(tmp_path, without_tensorrt):
    with pytest.raises(te.TensorRTNotInstalledError):
        te.check_engine_sidecar(_engine_with_sidecar(tmp_path))


def test_failed_sidecar_write_removes_the_engine(tmp_path, monkeypatch):
    def failing(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(te, "write_json", failing)
    with pytest.raises(OSError):
        _engine_with_sidecar(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# Real engines (skipped without TensorRT and a GPU)


@needs_trt_gpu
@pytest.mark.slow
def test_fp16_engine_builds_checks_and_matches(plain_graph, tmp_path, tiny_checkpoint):
    from llava_edge.export import vision_parity
    from llava_edge.export.vision_graph import load_vision

    cache = tmp_path / "timing.cache"
    engine = tmp_path / "vision_fp16.engine"
    sidecar = te.build_trt_engine(plain_graph, engine, "fp16", max_batch=4, timing_cache=cache)
    assert engine.is_file() and cache.is_file() and cache.stat().st_size > 0
    assert sidecar["profile"]["min"][0] == 1 and sidecar["profile"]["max"][0] == 4
    assert te.check_engine_sidecar(engine) == sidecar
    loaded = load_vision(tiny_checkpoint)
    pixels = vision_parity.preprocess(
        loaded.processor, [im for _, im in vision_parity.synthetic_images(6)])
    reference = vision_parity.torch_embeds(loaded.encoder(), pixels)
    for batch in (1, 3):
        figures = vision_parity.compare(reference, te.run_engine(engine, pixels, batch))
        assert figures.mean_cosine >= DEFAULT_GATES["fp16"]
    # A rebuild reuses the timing cache.
    te.build_trt_engine(plain_graph, tmp_path / "again.engine", "fp16", max_batch=4,
                        timing_cache=cache)


@needs_trt_gpu
@pytest.mark.slow
def test_export_vision_writes_parity_gated_engines(tiny_checkpoint, tmp_path):
    result = export_vision(tiny_checkpoint, tmp_path / "out", precisions=("fp32",),
                           tensorrt=("fp16", "int8"), max_batch=4, n_parity_images=8)
    for engine in result.engines:
        assert engine.error is None and engine.parity is not None, engine
        assert engine.passed and engine.written, engine
        assert engine.parity["mean_cosine"] >= DEFAULT_GATES[engine.precision]
        for name in engine.files:
            assert (tmp_path / "out" / name).is_file()
        te.check_engine_sidecar(tmp_path / "out" / engine.files[0])


def _tiny_standard_graph(path):
    """A valid one-node ONNX graph with a `pixel_values` input (for argument checks)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixel_values"], ["image_embeds"])], "g",
        [helper.make_tensor_value_info("pixel_values", 1, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("image_embeds", 1, ["batch", 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
