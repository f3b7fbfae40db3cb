"""export_vision: ONNX graphs in four precisions, parity-gated against PyTorch.

The module-scoped exports below run once per session for `tiny` (CLIP) and `tiny-qwen2`
(SigLIP); the tests read their files and figures. Figures measured when this was
written (8 synthetic images, mean per-token cosine to PyTorch fp32; int8 / int4 with 7-bit
weights, the same on every CPU class: see benchmarks/results/int8-schemes-20261203):

    tiny (CLIP)          fp32 1.000000  fp16 0.9999998  int8 0.99970  int4 0.9905
    tiny-qwen2 (SigLIP)  fp32 1.000000  fp16 0.9999996  int8 0.99952  int4 0.9851
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from llava_edge.export import vision as vision_mod
from llava_edge.export import onnx_export, vision_parity, vision_quantize
from llava_edge.export.vision import DEFAULT_GATES, VisionExportError, export_vision
from llava_edge.export.vision_graph import load_vision
from llava_edge.runtimes.preprocess import PreprocessRecipe

ALL = ("fp32", "fp16", "int8", "int4")


@pytest.fixture(scope="module", params=["tiny_checkpoint", "tiny_qwen2_checkpoint"])
def exported(request, tmp_path_factory):
    """(checkpoint, result) of a four-precision export, once per preset per session."""
    checkpoint = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp("vision") / "bundle"
    return checkpoint, export_vision(checkpoint, out, precisions=ALL)


def _files(out_dir):
    return sorted(p.name for p in out_dir.iterdir())


@pytest.mark.slow
def test_all_precisions_hold_their_gates(exported):
    _, result = exported
    assert [v.precision for v in result.variants] == list(ALL)
    for v in result.variants:
        assert v.passed and v.written, v
        assert v.parity["mean_cosine"] >= DEFAULT_GATES[v.precision]
        assert v.parity["min_cosine"] > 0.95
        assert v.parity["n_images"] == 8 and v.parity["n_tokens"] == 8 * 16
    fp32 = result.variant("fp32").parity
    assert fp32["max_abs_err"] < 1e-5 and fp32["min_cosine"] > 0.999999
    assert result.variant("fp16").parity["mean_cosine"] > 0.99999
    assert result.variant("int8").parity["mean_cosine"] > 0.999


@pytest.mark.slow
def test_graphs_check_fuse_and_carry_metadata(exported):
    _, result = exported
    out = result.out_dir
    assert _files(Path(out)) == sorted(f"vision_{p}.onnx" for p in ALL)
    spec = result.graph
    # Every computed encoder layer became one fused Attention node.
    assert result.fused_ops["Attention"] == spec["n_layers_run"]
    assert result.fused_ops["SkipLayerNormalization"] >= spec["n_layers_run"]
    for v in result.variants:
        path = Path(out) / v.files[0]
        onnx.checker.check_model(str(path))  # path-based: works with external data too
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["llava_edge.precision"] == v.precision
        assert meta["llava_edge.n_image_tokens"] == str(result.n_image_tokens)
        assert model.graph.input[0].name == "pixel_values"
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = {p: onnx_export.op_counts(onnx.load(str(Path(out) / f"vision_{p}.onnx")))
           for p in ("int8", "int4")}
    assert ops["int8"].get("QAttention") == spec["n_layers_run"]
    assert ops["int8"].get("MatMulInteger", 0) > 0 and "ConvInteger" not in ops["int8"]
    assert ops["int4"].get("MatMulNBits", 0) > 0
    assert ops["int4"].get("QAttention") == spec["n_layers_run"]  # q/k/v: int8, not fp32


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 initializers that integer GEMMs multiply with uint8 activations: the
    weight inputs of MatMulInteger / QAttention and of QDQ MatMuls' DequantizeLinear."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    used = set()
    for node in model.graph.node:
        if node.op_type in ("MatMulInteger", "QAttention", "DequantizeLinear"):
            used.update(name for name in node.input if name in inits
                        and inits[name].data_type == onnx.TensorProto.INT8)
    return {name: numpy_helper.to_array(inits[name]) for name in used}


@pytest.mark.slow
def test_int8_weights_cannot_saturate_a_16_bit_pair_sum(exported):
    """On x86 without VNNI, ONNX Runtime's u8 x s8 GEMM adds pairs of products into an
    int16 with saturation (vpmaddubsw). Every int8 weight is within [-64, 64], so the
    largest pair, 2 * 255 * 64 = 32,640, fits in 32,767 on any CPU."""
    _, result = exported
    bound = vision_quantize.MAX_WEIGHT_MAGNITUDE
    assert 2 * vision_quantize.MAX_ACTIVATION * bound <= vision_quantize.INT16_MAX
    for precision in ("int8", "int4"):
        v = result.variant(precision)
        assert v.method["reduce_range"] is True
        weights = _int8_weights(onnx.load(str(Path(result.out_dir) / v.files[0])))
        assert weights, precision  # int4 too: its q/k/v Attention weight is int8
        worst = max(int(np.abs(w.astype(np.int32)).max()) for w in weights.values())
        assert worst <= bound, (precision, worst)
    assert result.measured_on["isa_class"]  # the figures say which CPU they are from


@pytest.mark.slow
def test_batch_1_and_3_run_and_agree(exported):
    checkpoint, result = exported
    pixels = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    for v in result.variants:
        session = onnx_export.make_session(Path(result.out_dir) / v.files[0])
        three = session.run(None, {"pixel_values": pixels})[0]
        ones = np.concatenate([session.run(None, {"pixel_values": pixels[i:i + 1]})[0]
                               for i in range(3)])
        assert three.shape == (3, result.n_image_tokens, result.n_embd)
        assert three.dtype == np.float32
        if v.precision in ("fp32", "fp16"):
            np.testing.assert_allclose(three, ones, atol=1e-4)
        else:
            # Dynamic int8 (and int4's int8 compute) scale activations per tensor, i.e. over
            # the whole batch, so batching moves the result slightly; it stays close.
            assert vision_parity.compare(ones, three).min_cosine > 0.999


@pytest.mark.slow
def test_result_describes_the_graph_for_the_manifest(exported):
    checkpoint, result = exported
    data = json.loads(json.dumps(result.to_dict()))  # JSON-serialisable as is
    assert data["image_size"] == 64 and data["n_image_tokens"] == 16 and data["n_embd"] == 256
    assert data["exporter"] in ("dynamo", "torchscript") and data["opset"] >= 17
    pre = PreprocessRecipe.from_dict(data["preprocess"])  # the runtime's own recipe
    assert pre.resample == 3 and pre.pad_to_square is False  # bicubic; an untrained checkpoint
    if data["vision_kind"] == "clip":
        assert (pre.resize_shortest_edge, pre.crop_height, pre.crop_width) == (64, 64, 64)
    else:
        assert pre.image_mean == (0.5, 0.5, 0.5)
        assert (pre.resize_height, pre.resize_width) == (64, 64)
    assert len(data["parity_images"]) == 8 and data["versions"]["onnxruntime"]


def test_fp32_export_smoke(tiny_checkpoint, tmp_path):
    """The one export in the fast suite: fp32 only, real graph, real parity."""
    result = export_vision(tiny_checkpoint, tmp_path / "out", n_parity_images=2)
    assert _files(tmp_path / "out") == ["vision_fp32.onnx"]
    v = result.variant("fp32")
    assert v.written and v.parity["mean_cosine"] >= DEFAULT_GATES["fp32"]
    # The graph's output is transformers' get_image_features output.
    loaded = load_vision(tiny_checkpoint)
    image = Image.new("RGB", (80, 50), (200, 30, 90))
    pixels = vision_parity.preprocess(loaded.processor, [image])
    ours = onnx_export.make_session(tmp_path / "out" / "vision_fp32.onnx").run(
        None, {"pixel_values": pixels})[0]
    from llava_edge.export.vision_graph import reference_features

    theirs = reference_features(loaded.model, torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# --------------------------------------------------------------------------------------
# Gates, fallback, degraded


@pytest.mark.slow
def test_int4_falls_back_to_int8_when_it_misses_its_gate(tiny_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    result = export_vision(tiny_checkpoint, tmp_path / "out", precisions=("int4",),
                           gates={"int4": 1.0}, int4_fallback=True, n_parity_images=4)
    int4, int8 = result.variant("int4"), result.variant("int8")
    assert not int4.passed and not int4.written and int4.fallback == "int8"
    assert "fell back to int8" in int4.note
    assert int4.parity["mean_cosine"] < 1.0  # the figures are kept either way
    assert int8.written and int8.passed
    assert _files(tmp_path / "out") == ["vision_int8.onnx"]
    assert any("fell back to int8" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_variant_under_its_gate_is_not_written_unless_degraded_allowed(
        tiny_checkpoint, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    strict = export_vision(tiny_checkpoint, tmp_path / "strict", precisions=("fp32", "int8"),
                           gates={"int8": 1.0}, n_parity_images=2)
    assert strict.variant("fp32").written and not strict.variant("int8").written
    assert "not written" in strict.variant("int8").note
    assert strict.variant("int8").parity["mean_cosine"] > 0.99  # figures kept
    assert _files(tmp_path / "strict") == ["vision_fp32.onnx"]

    degraded = export_vision(tiny_checkpoint, tmp_path / "degraded", precisions=("int8",),
                             gates={"int8": 1.0}, allow_degraded=True, n_parity_images=2)
    v = degraded.variant("int8")
    assert v.written and not v.passed and "allow_degraded" in v.note
    assert _files(tmp_path / "degraded") == ["vision_int8.onnx"]
    assert any("written anyway" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------
# Calibration and static int8


def _write_calib(folder, n=4):
    """A small calibration folder: shape scenes like the deployment images, one noise image."""
    from llava_edge.data.shapes import render_scene, sample_scene

    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n - 1):
        render_scene(sample_scene(rng), 48 + 40 * i).save(folder / f"img{i}.png")
    noise = rng.integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / f"img{n - 1}.jpg")
    return folder


@pytest.mark.slow
def test_static_int8_from_calib_dir(tiny_qwen2_checkpoint, tmp_path):
    calib = _write_calib(tmp_path / "calib")
    result = export_vision(tiny_qwen2_checkpoint, tmp_path / "out", precisions=("int8",),
                           calib_dir=calib, n_parity_images=4)
    v = result.variant("int8")
    assert v.method["method"] == "static" and v.method["format"] == "QDQ"
    assert v.written and v.parity["mean_cosine"] >= DEFAULT_GATES["int8"]
    assert v.parity["n_images"] == 4 + 4  # calib images join the parity set
    assert [n for n in result.parity_images if n.startswith("calib/")] == [
        "calib/img0.png", "calib/img1.png", "calib/img2.png", "calib/img3.jpg"]
    model = onnx.load(str(tmp_path / "out" / "vision_int8.onnx"))
    ops = onnx_export.op_counts(model)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    weights = _int8_weights(model)  # 7-bit here too (see the saturation test)
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights.values()) \
        <= vision_quantize.MAX_WEIGHT_MAGNITUDE


def _missing(tmp):
    return tmp / "missing"


def _empty(tmp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images here")
    return tmp / "empty"


def _corrupt(tmp):
    (tmp / "bad").mkdir()
    (tmp / "bad" / "x.png").write_bytes(b"not a png")
    return tmp / "bad"


@pytest.mark.parametrize("make, message", [
    (_missing, "does not exist"),
    (_empty, "holds no images"),
    (_corrupt, r"x\.png cannot be read"),
])
def test_calib_dir_problems_are_named_before_any_work(tiny_checkpoint, tmp_path, make, message):
    with pytest.raises(vision_parity.CalibrationImagesError, match=message):
        export_vision(tiny_checkpoint, tmp_path / "out", precisions=("int8",),
                      calib_dir=make(tmp_path))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# Nothing half-written


@pytest.mark.slow
def test_interrupted_export_leaves_no_final_files(tiny_checkpoint, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while quantizing

    monkeypatch.setattr(vision_quantize, "quantize_int8_dynamic", boom)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_vision(tiny_checkpoint, out, precisions=("fp32", "fp16", "int8"), n_parity_images=2)
    assert _files(out) == []  # fp32 and fp16 were built, but never under their final names


@pytest.mark.slow
def test_failure_while_moving_files_rolls_back(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_replace = vision_mod.os.replace
    into_out = []

    def flaky(src, dst):
        if Path(dst).parent == out:  # only the final moves into the output folder
            into_out.append(dst)
            if len(into_out) == 2:
                raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(vision_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        export_vision(tiny_checkpoint, out, precisions=("fp32", "fp16"), n_parity_images=2)
    assert len(into_out) == 2
    assert not out.exists()  # the first file moved was taken back; the folder was ours


@pytest.mark.slow
def test_external_data_graphs(tiny_checkpoint, tmp_path):
    result = export_vision(tiny_checkpoint, tmp_path / "out", precisions=("fp32", "int4"),
                           external_data=True, n_parity_images=2)
    assert _files(tmp_path / "out") == ["vision_fp32.onnx", "vision_fp32.onnx.data",
                                        "vision_int4.onnx", "vision_int4.onnx.data"]
    for v in result.variants:
        assert v.files == [f"vision_{v.precision}.onnx", f"vision_{v.precision}.onnx.data"]
        assert v.written and v.passed
        onnx.checker.check_model(str(tmp_path / "out" / v.files[0]))


@pytest.mark.slow
def test_plain_graph_for_tensorrt_is_kept_on_request(tiny_checkpoint, tmp_path):
    result = export_vision(tiny_checkpoint, tmp_path / "out", precisions=("int8",),
                           plain_graph=True, n_parity_images=2)
    assert _files(tmp_path / "out") == ["vision_fp32_plain.onnx", "vision_int8.onnx"]
    plain = result.plain
    assert plain.written and plain.passed and plain.files == ["vision_fp32_plain.onnx"]
    assert plain.parity["mean_cosine"] >= DEFAULT_GATES["fp32"]
    model = onnx.load(str(tmp_path / "out" / "vision_fp32_plain.onnx"))
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}  # TensorRT-parsable
    assert [v.precision for v in result.variants] == ["int8"]  # not one of the ORT variants


def test_save_onnx_switches_to_external_data_by_size(tmp_path, monkeypatch):
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert onnx_export.save_onnx(model, tmp_path / "small.onnx") == [tmp_path / "small.onnx"]
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    files = onnx_export.save_onnx(model, tmp_path / "big.onnx")
    assert files == [tmp_path / "big.onnx", tmp_path / "big.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "big.onnx"))
    x = np.ones((1, 64), np.float32)
    y = onnx_export.make_session(tmp_path / "big.onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.full((1, 64), 64.0))


# --------------------------------------------------------------------------------------
# Bad arguments fail before any work, naming the thing at fault


@pytest.mark.parametrize("kwargs, message", [
    ({"precisions": ("fp32", "bf16")}, "unknown precision 'bf16'"),
    ({"precisions": ()}, "no precision requested"),
    ({"gates": {"fp8": 0.9}}, "gate for unknown precision 'fp8'"),
    ({"gates": {"int8": 2}}, "gate for int8 must be a cosine"),
    ({"int8_method": "awq"}, "int8_method 'awq'"),
    ({"max_batch": 0}, "max_batch must be a positive integer"),
    ({"tensorrt": ("fp32",)}, "unknown TensorRT precision 'fp32'"),
])
def test_bad_arguments(tiny_checkpoint, tmp_path, kwargs, message):
    with pytest.raises(VisionExportError, match=message):
        export_vision(tiny_checkpoint, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_clobbered(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "vision_fp32.onnx").write_bytes(b"keep me")
    with pytest.raises(VisionExportError, match="vision_fp32.onnx already exists"):
        export_vision(tiny_checkpoint, out)
    assert (out / "vision_fp32.onnx").read_bytes() == b"keep me"


@pytest.mark.slow
def test_overwrite_replaces_and_drops_stale_variants(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    export_vision(tiny_checkpoint, out, precisions=("fp32", "int8"), n_parity_images=2)
    (out / "notes.txt").write_text("not ours")
    result = export_vision(tiny_checkpoint, out, precisions=("fp32", "int8"), overwrite=True,
                           gates={"int8": 1.0}, n_parity_images=2)
    assert not result.variant("int8").written
    # The int8 graph of the first run must not pass for this run's result.
    assert _files(out) == ["notes.txt", "vision_fp32.onnx"]


def test_unsupported_checkpoint_fails_before_writing(tiny_checkpoint, tmp_path):
    import shutil

    from llava_edge.export.open_checkpoint import UnsupportedModelError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["vision_config"]["model_type"] = "pixtral"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="vision tower 'pixtral' is not supported"):
        export_vision(ckpt, tmp_path / "out", precisions=ALL)
    assert not (tmp_path / "out").exists()


def test_parity_metrics():
    ref = np.random.default_rng(0).standard_normal((2, 5, 8))
    same = vision_parity.compare(ref, ref.astype(np.float32))
    assert same.mean_cosine == pytest.approx(1.0) and same.max_abs_err < 1e-6
    flipped = ref.copy()
    flipped[1, 2] *= -1
    figures = vision_parity.compare(ref, flipped)
    assert figures.min_cosine == pytest.approx(-1.0)
    assert figures.mean_cosine == pytest.approx((9 - 1) / 10)
    broken = ref.copy()
    broken[0, 0, 0] = np.nan
    bad = vision_parity.compare(ref, broken)
    assert bad.min_cosine == -1.0 and bad.to_dict()["max_abs_err"] is None
    with pytest.raises(ValueError, match="shape mismatch"):
        vision_parity.compare(ref, ref[:, :4])


def test_synthetic_images_are_deterministic_and_varied():
    a = vision_parity.synthetic_images(8)
    b = vision_parity.synthetic_images(8)
    assert [n for n, _ in a] == [n for n, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b))
    sizes = {im.size for _, im in a}
    assert len(sizes) >= 5 and any(w != h for w, h in sizes)


# --------------------------------------------------------------------------------------
# A benchmark-size tower (SigLIP-so400m-384 dims: 27 layers, head size 72, 729 tokens)


@pytest.mark.slow
def test_siglip_so400m_dims_export_and_fuse(tmp_path):
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    checkpoint = build_checkpoint(get_preset("qwen2-0.5b-siglip"), tmp_path / "ckpt").path
    result = export_vision(checkpoint, tmp_path / "out", precisions=("fp32", "int4"),
                           n_parity_images=2)
    assert result.n_image_tokens == 729 and result.n_embd == 896
    assert result.fused_ops["Attention"] == 27  # layer -1: the whole tower, every layer fused
    for v in result.variants:
        assert v.written and v.parity["mean_cosine"] >= DEFAULT_GATES[v.precision], v
    session = onnx_export.make_session(tmp_path / "out" / "vision_int4.onnx")
    out = session.run(None, {"pixel_values": np.zeros((1, 3, 384, 384), np.float32)})[0]
    assert out.shape == (1, 729, 896)


def test_quantizers_leave_the_hosts_logging_alone(exported, tmp_path, caplog):
    """ONNX Runtime's quantizers print a pre-processing advice through the root logger and
    the int4 one installs a root handler on import; neither may reach the host."""
    checkpoint, result = exported
    fp32 = Path(result.out_dir) / result.variant("fp32").files[0]
    size = load_vision(checkpoint).spec.image_size
    calibration = [np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)]
    caplog.set_level(logging.INFO)
    root = logging.getLogger()
    handlers, level, filters = list(root.handlers), root.level, list(root.filters)
    vision_quantize.quantize_int8_dynamic(fp32, tmp_path / "int8.onnx")
    vision_quantize.quantize_int8_static(fp32, tmp_path / "int8s.onnx", calibration)
    vision_quantize.quantize_int4(fp32, tmp_path / "int4.onnx")
    assert "pre-processing" not in caplog.text
    assert root.handlers == handlers and root.level == level and root.filters == filters
    logging.getLogger("llava_edge.test").warning("still heard")
    assert "still heard" in caplog.text  # the host's own records still get through


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_qwen2_checkpoint",
                                     "tiny_next_checkpoint"])
def test_fusion_without_shape_inference_is_the_same_graph(request, fixture, tmp_path):
    """optimize_onnx skips ORT's symbolic shape inference (it copies the whole model several
    times: half the optimizer's peak memory on SigLIP-so400m); the fused graph must be the
    one shape inference would have let through, node for node, on CLIP, SigLIP and NeXT."""
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    loaded = load_vision(request.getfixturevalue(fixture))
    plain = tmp_path / "plain.onnx"
    onnx_export.export_to_onnx(loaded.encoder(), plain)
    spec = loaded.spec
    ours = tmp_path / "ours.onnx"
    counts = onnx_export.optimize_onnx(plain, ours, spec.num_heads, spec.hidden_size)
    with_shapes = optimizer.optimize_model(
        str(plain), model_type=onnx_export.OPTIMIZER_MODEL_TYPE, num_heads=spec.num_heads,
        hidden_size=spec.hidden_size, opt_level=0, use_gpu=False).model
    mine = onnx.load(str(ours))

    def nodes(model):
        return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]

    def weights(model):
        from onnx import numpy_helper

        return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}

    assert nodes(mine) == nodes(with_shapes) and weights(mine) == weights(with_shapes)
    assert counts["Attention"] > 0 and counts["SkipLayerNormalization"] > 0  # it did fuse
    # the same graph runs the same: compared with a float tolerance all the same, so that
    # nothing rests on ONNX Runtime scheduling two sessions' kernels identically
    x = np.random.default_rng(0).standard_normal(
        (2, 3, spec.image_size, spec.image_size)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           .run(None, {onnx_export.INPUT_NAME: x})[0] for m in (mine, with_shapes)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-5, atol=1e-6)
