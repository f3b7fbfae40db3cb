"""Which vision backend the runtime picks (runtimes/vision_backend.py), and TensorRT engines
from a bundle run by the runtime (runtimes/vision_tensorrt.py) with `tensorrt` and the GPU
stood in for (tests/fake_tensorrt.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest

from fake_tensorrt import HostMemory, fake_tensorrt_module
from llava_edge.bundle import open_bundle, write_manifest
from llava_edge.errors import LlavaEdgeError
from llava_edge.export import tensorrt_engine as te
from llava_edge.manifest import TensorrtEngine, VisionGraph
from llava_edge.runtimes.vision_backend import choose_vision

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
H200 = te.TrtEnvironment("10.9.0", "NVIDIA H200", "9.0")
ORIN = te.TrtEnvironment("10.3.0", "Orin", "8.7")


def _sidecar(path, env: te.TrtEnvironment, precision="fp16") -> None:
    te.sidecar_path(path).write_text(json.dumps({
        "format_version": 1, "tensorrt_version": env.tensorrt_version,
        "gpu_name": env.gpu_name, "compute_capability": env.compute_capability,
        "precision": precision}))


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    """tiny's manifest with int8 as the default graph and an fp16 graph listed (only the
    manifest is read by choose_vision)."""
    m = open_bundle(tiny_bundle, verify="size").manifest
    fp16 = VisionGraph(precision="fp16", file="vision_fp16.onnx", n_embd=m.image.n_embd)
    return dataclasses.replace(m, vision=(*m.vision, fp16), defaults={**m.defaults,
                                                                      "vision": "int8"})


@pytest.fixture
def with_engines(manifest, tmp_path):
    """The manifest with an fp16 and an int8 engine built for an H200, sidecars on disk."""
    engines = []
    for precision in ("int8", "fp16"):
        name = f"vision_{precision}.engine"
        (tmp_path / name).write_bytes(b"plan")
        _sidecar(tmp_path / name, H200, precision)
        engines.append(TensorrtEngine(precision=precision, file=name,
                                      sidecar=name + ".json", passed=True))
    return dataclasses.replace(manifest, tensorrt=tuple(engines)), tmp_path


# -- choosing ------------------------------------------------------------------------------

def test_cpu_machine_runs_the_default_graph_and_says_why(manifest, tmp_path):
    c = choose_vision(manifest, tmp_path, available_providers=CPU)
    assert (c.backend, c.precision, c.providers, c.placement) == ("onnx", "int8", ("CPUExecutionProvider",), "CPU")
    assert "default graph (int8) on the CPU" in c.reason
    assert any("TensorRT engine: the bundle has none" in p for p in c.passed_over)
    assert any("GPU providers: none installed" in p for p in c.passed_over)


def test_gpu_provider_takes_the_fp16_graph_not_the_integer_default(manifest, tmp_path):
    c = choose_vision(manifest, tmp_path, available_providers=CUDA)
    assert (c.backend, c.file, c.providers) == ("onnx", "vision_fp16.onnx", tuple(CUDA))
    assert c.placement == "CUDA" and "integer graphs do not" in c.reason
    no_fp16 = dataclasses.replace(manifest, vision=tuple(v for v in manifest.vision
                                                         if v.precision != "fp16"))
    assert choose_vision(no_fp16, tmp_path, available_providers=CUDA).precision == "fp32"


def test_asked_precision_and_cpu_provider_win(manifest, tmp_path):
    asked = choose_vision(manifest, tmp_path, "int8", available_providers=CUDA)
    assert (asked.precision, asked.providers[0], asked.reason) == (
        "int8", "CUDAExecutionProvider", "the int8 graph, as asked")
    cpu = choose_vision(manifest, tmp_path, providers="cpu", available_providers=CUDA)
    assert (cpu.precision, cpu.providers) == ("int8", ("CPUExecutionProvider",))
    with pytest.raises(LlavaEdgeError, match="CUDAExecutionProvider not available"):
        choose_vision(manifest, tmp_path, providers="cuda", available_providers=CPU)
    with pytest.raises(LlavaEdgeError, match="not one of auto, onnx, tensorrt"):
        choose_vision(manifest, tmp_path, backend="torch", available_providers=CPU)


def test_matching_engine_is_first_fp16_before_int8(with_engines):
    m, bundle_dir = with_engines
    c = choose_vision(m, bundle_dir, available_providers=CUDA, trt_environment=H200)
    assert (c.backend, c.file, c.precision, c.providers, c.placement) == (
        "tensorrt", "vision_fp16.engine", "fp16", (), "TensorRT")
    assert "matches this machine" in c.reason
    int8 = choose_vision(m, bundle_dir, "int8", backend="tensorrt", available_providers=CUDA,
                         trt_environment=H200)
    assert int8.file == "vision_int8.engine"


def test_engine_for_another_gpu_falls_back_with_the_reason(with_engines):
    m, bundle_dir = with_engines
    c = choose_vision(m, bundle_dir, available_providers=CUDA, trt_environment=ORIN)
    assert (c.backend, c.file) == ("onnx", "vision_fp16.onnx")
    (why,) = c.passed_over
    assert "compute capability 9.0 (this GPU is 8.7)" in why and "TensorRT 10.9.0" in why
    with pytest.raises(LlavaEdgeError, match="no TensorRT engine can run here: .*rebuild it"):
        choose_vision(m, bundle_dir, backend="tensorrt", available_providers=CUDA,
                      trt_environment=ORIN)


@pytest.mark.parametrize("environment, message", [
    (te.TensorRTNotInstalledError("TensorRT is not installed: pip install ..."),
     "TensorRT is not installed"),
    (te.NoCudaGpuError("no CUDA GPU is visible"), "no CUDA GPU is visible"),
])
def test_no_tensorrt_or_no_gpu_falls_back(with_engines, environment, message):
    m, bundle_dir = with_engines
    c = choose_vision(m, bundle_dir, available_providers=CPU, trt_environment=environment)
    assert c.backend == "onnx" and c.precision == "int8"
    assert any(message in p for p in c.passed_over)


def test_engine_that_failed_parity_or_lost_its_sidecar_is_passed_over(with_engines):
    m, bundle_dir = with_engines
    failed = dataclasses.replace(m, tensorrt=tuple(
        dataclasses.replace(e, passed=False) if e.precision == "fp16" else e
        for e in m.tensorrt))
    c = choose_vision(failed, bundle_dir, available_providers=CUDA, trt_environment=H200)
    assert c.file == "vision_int8.engine"  # the int8 engine passed
    te.sidecar_path(bundle_dir / "vision_int8.engine").unlink()
    c = choose_vision(failed, bundle_dir, available_providers=CUDA, trt_environment=H200)
    assert c.backend == "onnx"
    assert "failed its parity gate" in c.passed_over[0]
    assert "sidecar vision_int8.engine.json is missing" in c.passed_over[0]


def test_explicit_precision_does_not_probe_tensorrt(with_engines):
    m, bundle_dir = with_engines

    class Boom:  # a probe would read it
        def __getattr__(self, name):
            raise AssertionError("TensorRT was probed")

    c = choose_vision(m, bundle_dir, "fp32", available_providers=CPU, trt_environment=Boom())
    assert (c.backend, c.precision) == ("onnx", "fp32")


# -- running an engine from the bundle -----------------------------------------------------

@pytest.fixture
def engine_bundle(tiny_bundle, tmp_path):
    """A copy of tiny_bundle with an fp16 engine (here: the fp32 ONNX graph, which the fake
    TensorRT runs) and its sidecar for an H200, written as export writes them."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    m = open_bundle(bundle, verify="size").manifest
    engine = bundle / "vision_fp16.engine"
    engine.write_bytes((bundle / m.vision_entry("fp32").file).read_bytes())
    _sidecar(engine, H200)
    write_manifest(bundle, dataclasses.replace(m, tensorrt=(TensorrtEngine(
        precision="fp16", file=engine.name, sidecar=engine.name + ".json", passed=True),)))
    return bundle


@pytest.fixture
def fake_gpu(monkeypatch):
    """`import tensorrt` gives the fake module, the GPU is an H200, CUDA memory is host
    memory. Returns the module (its ``engines`` list holds what was opened)."""
    from llava_edge.runtimes import cuda_memory

    trt = fake_tensorrt_module(max_batch=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "detect_gpu", lambda: ("NVIDIA H200", "9.0"))
    monkeypatch.setattr(cuda_memory, "CudaMemory", HostMemory)
    return trt


def _pixels(n: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("half", [False, True])
def test_engine_encoder_runs_in_chunks_and_matches_onnx_runtime(tiny_bundle, monkeypatch,
                                                                 half):
    from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder
    from llava_edge.runtimes.vision_tensorrt import TensorrtVisionEncoder

    trt = fake_tensorrt_module(max_batch=2, half_output=half)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    graph = open_bundle(tiny_bundle, verify="size").file("vision_fp32.onnx")
    memory = HostMemory()
    enc = TensorrtVisionEncoder(graph, memory=memory)
    x = _pixels(5)
    got = enc.encode(x)
    want = OnnxVisionEncoder(graph, providers="cpu", n_threads=1).encode(x)
    assert trt.engines[0].runs == [2, 2, 1]  # the profile's max batch, then the rest
    assert got.dtype == np.float32 and got.shape == want.shape
    if half:  # fp16 keeps 11 significant bits: within 2^-11 of each value (+ subnormals)
        np.testing.assert_allclose(got, want, rtol=2**-11, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)
    assert len(memory.buffers) == 2  # allocated once, at load
    enc.close()
    assert not memory.buffers and memory.closed


def test_engine_encoder_refuses_views_of_another_size(tiny_bundle, fake_gpu):
    from llava_edge.runtimes.vision_tensorrt import EngineLoadError, TensorrtVisionEncoder

    enc = TensorrtVisionEncoder(open_bundle(tiny_bundle, verify="size").file("vision_fp32.onnx"),
                                memory=HostMemory())
    with pytest.raises(EngineLoadError, match=r"takes views of \[3, 64, 64\], got \[3, 32, 32\]"):
        enc.encode(_pixels(1, 32))


def test_load_runs_the_bundles_engine_and_answers_as_onnx(engine_bundle, fake_gpu):
    from PIL import Image

    from llava_edge.runtimes.pipeline import LlavaEdge

    image = Image.new("RGB", (80, 48), (200, 40, 40))
    with LlavaEdge.load(engine_bundle, tune=False, n_threads=1) as model:
        assert model.vision_choice.backend == "tensorrt"
        assert (model.vision_precision, model.placement()["vision_on"]) == ("fp16", "TensorRT")
        answer = model.ask(image, "What colour?", max_new_tokens=8)
        embeds = model.embed(image)
    assert fake_gpu.engines and fake_gpu.engines[0].runs  # the engine ran
    assert answer.timings.vision_on == "TensorRT"
    with LlavaEdge.load(engine_bundle, tune=False, n_threads=1, vision_precision="fp32",
                        vision_backend="onnx") as plain:
        assert plain.vision_choice.backend == "onnx"
        want = plain.ask(image, "What colour?", max_new_tokens=8)
        np.testing.assert_array_equal(embeds, plain.embed(image))
    assert answer.tokens == want.tokens


def test_engine_that_will_not_open_falls_back_or_fails_as_asked(engine_bundle, fake_gpu):
    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.vision_tensorrt import EngineLoadError

    # A plan TensorRT cannot deserialize: the sidecar said it fits, the load says otherwise.
    (engine_bundle / "vision_fp16.engine").write_bytes(b"not a plan")
    m = open_bundle(engine_bundle, verify="none").manifest
    write_manifest(engine_bundle, m)  # re-hash, as if the engine had been built so
    with LlavaEdge.load(engine_bundle, tune=False, n_threads=1) as model:
        c = model.vision_choice
        assert (c.backend, c.precision) == ("onnx", "fp32")
        assert "could not deserialize" in c.passed_over[0]
    with pytest.raises(EngineLoadError, match="vision_fp16.engine: TensorRT could not"):
        LlavaEdge.load(engine_bundle, tune=False, n_threads=1, vision_backend="tensorrt")


def test_engine_without_cuda_python_falls_back_naming_it(engine_bundle, monkeypatch):
    from llava_edge.runtimes import cuda_memory
    from llava_edge.runtimes.pipeline import LlavaEdge

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt_module())
    monkeypatch.setattr(te, "detect_gpu", lambda: ("NVIDIA H200", "9.0"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with LlavaEdge.load(engine_bundle, tune=False, n_threads=1) as model:
        assert model.vision_choice.backend == "onnx"
        assert "needs cuda-python" in model.vision_choice.passed_over[0]
    with pytest.raises(cuda_memory.CudaUnavailableError, match="pip install 'llava-edge"):
        LlavaEdge.load(engine_bundle, tune=False, n_threads=1, vision_backend="tensorrt")


def test_cli_run_and_doctor_say_which_backend(engine_bundle, tiny_bundle, fake_gpu, capsys):
    from PIL import Image

    from llava_edge.cli import run as cli

    image = engine_bundle.parent / "red.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    assert cli(["embed", str(engine_bundle), "--image", str(image), "--out",
                str(engine_bundle.parent / "e.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["vision_backend"], out["vision_precision"]) == ("tensorrt", "fp16")
    assert cli(["doctor", str(engine_bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["bundle"]
    assert (report["vision_backend"], report["vision_file"]) == ("tensorrt", "vision_fp16.engine")
    assert cli(["doctor", str(engine_bundle)]) == 0
    assert "matches this machine's TensorRT and GPU" in capsys.readouterr().out
    assert cli(["run", str(tiny_bundle), "--image", str(image), "--prompt", "Hi",
                "--vision-backend", "tensorrt", "--no-tune"]) == 1
    assert "no TensorRT engine can run here: the bundle has none" in capsys.readouterr().err


# -- llama.cpp's own vision path (mtmd + the bundle's mmproj) ---------------------------------

def test_rgb_from_pixel_values_is_exact():
    """mtmd takes 8-bit images: undoing the normalization gives back every byte."""
    from llava_edge.runtimes.vision_mtmd import rgb_from_pixel_values

    rgb = np.stack(np.meshgrid(np.arange(256), np.arange(3), indexing="ij"), -1)[..., 0]
    rgb = np.repeat(rgb[:, None, :], 2, axis=1).astype(np.uint8)  # [256, 2, 3]: every value
    for mean, std in [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                      ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]:
        pv = ((rgb.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
               - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None])
        assert np.array_equal(rgb_from_pixel_values(pv.astype(np.float32), mean, std), rgb)


def test_mtmd_where_llama_cpp_has_the_gpu_and_onnx_runtime_has_none(siglip_mmproj_bundle):
    m = open_bundle(siglip_mmproj_bundle).manifest
    assert m.mmproj_parity()["cosine_min"] >= 0.999  # measured at export: SigLIP matches
    c = choose_vision(m, siglip_mmproj_bundle, available_providers=CPU, llama_gpu=True)
    assert (c.backend, c.file, c.precision, c.placement) == (
        "mtmd", "mmproj-F16.gguf", "fp16", "GPU (llama.cpp mtmd)")
    assert "ONNX Runtime has no GPU provider here" in c.reason and "min cosine" in c.reason
    # ONNX Runtime on the GPU comes first; no GPU for llama.cpp: the CPU graph, no mention
    assert choose_vision(m, siglip_mmproj_bundle, available_providers=CUDA,
                         llama_gpu=True).backend == "onnx"
    cpu = choose_vision(m, siglip_mmproj_bundle, available_providers=CPU, llama_gpu=False)
    assert cpu.backend == "onnx" and not any("mtmd" in p for p in cpu.passed_over)
    # asked for: on the CPU where llama.cpp has no GPU
    asked = choose_vision(m, siglip_mmproj_bundle, backend="mtmd", llama_gpu=False)
    assert (asked.backend, asked.placement) == ("mtmd", "CPU (llama.cpp mtmd)")
    # a precision or provider asked for is an ONNX Runtime choice
    assert choose_vision(m, siglip_mmproj_bundle, "fp32", available_providers=CPU,
                         llama_gpu=True).backend == "onnx"


def test_mtmd_passed_over_for_clip_towers_with_the_measured_reason(clip_mmproj_bundle):
    m = open_bundle(clip_mmproj_bundle).manifest
    assert m.mmproj_parity()["cosine_min"] < 0.9  # llama.cpp's CLS-after-patches graph
    c = choose_vision(m, clip_mmproj_bundle, available_providers=CPU, llama_gpu=True)
    assert c.backend == "onnx"
    (why,) = [p for p in c.passed_over if "mtmd" in p]
    assert "llama.cpp issue #25814" in why and "min cosine 0." in why
    with pytest.raises(LlavaEdgeError, match="mtmd.*not offered.*#25814"):
        choose_vision(m, clip_mmproj_bundle, backend="mtmd", llama_gpu=True)


def test_mtmd_refused_without_an_mmproj_its_parity_or_for_next(siglip_mmproj_bundle, manifest,
                                                              tiny_next_bundle):
    m = open_bundle(siglip_mmproj_bundle).manifest
    for changed, says in [
        (manifest, "the bundle has no mmproj"),
        (dataclasses.replace(m, parity={}), "not compared with PyTorch's at export"),
        (dataclasses.replace(open_bundle(tiny_next_bundle).manifest, mmproj=m.mmproj),
         "LLaVA-NeXT: mtmd tiles"),
    ]:
        with pytest.raises(LlavaEdgeError, match=says):
            choose_vision(changed, siglip_mmproj_bundle, backend="mtmd", llama_gpu=True)


def test_mtmd_encodes_as_the_onnx_graph_and_answers(siglip_mmproj_bundle):
    """The real thing, on this machine's CPU: llama.cpp's image embeddings for images of
    several shapes (random pixels: no smooth image hides a resampling difference) within
    the gate of the ONNX graph's, and an answer through them. (Greedy tokens are not
    compared: F16 weights in ggml against fp32 in ONNX Runtime are different arithmetic,
    and a random model's near-flat logits may flip on another CPU.)"""
    from PIL import Image

    from llava_edge.runtimes.pipeline import LlavaEdge
    from llava_edge.runtimes.vision_backend import MTMD_GATE

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
              for h, w in [(64, 64), (240, 320), (500, 97), (13, 700)]]
    rows, tokens = {}, {}
    for backend in ("onnx", "mtmd"):
        with LlavaEdge.load(siglip_mmproj_bundle, tune=False, n_threads=1,
                            vision_backend=backend) as model:
            assert model.vision_choice.backend == backend
            rows[backend] = [model.embed(image) for image in images]
            answer = model.ask(images[1], "Describe the image.", max_new_tokens=12)
            tokens[backend] = answer.tokens
            if backend == "mtmd":
                assert answer.timings.vision_on == "CPU (llama.cpp mtmd)"
    for ours, llama in zip(rows["onnx"], rows["mtmd"]):
        assert ours.shape == llama.shape
        cosine = (ours * llama).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(llama, axis=1)
        assert cosine.min() >= MTMD_GATE
        # F16 weights in the mmproj: about 1e-3 relative, well inside fp16's 2^-11 per op
        assert np.linalg.norm(ours - llama) / np.linalg.norm(ours) < 5e-3
    assert tokens["mtmd"] and tokens["onnx"]


def test_cli_mtmd_backend(siglip_mmproj_bundle, clip_mmproj_bundle, tmp_path, capsys):
    from PIL import Image

    from llava_edge.cli import run as cli

    image = tmp_path / "red.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(image)
    assert cli(["embed", str(siglip_mmproj_bundle), "--image", str(image), "--out",
                str(tmp_path / "e.npy"), "--vision-backend", "mtmd", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["vision_backend"], out["vision_precision"]) == ("mtmd", "fp16")
    assert cli(["run", str(clip_mmproj_bundle), "--image", str(image), "--prompt", "Hi",
                "--vision-backend", "mtmd", "--no-tune"]) == 1
    assert "llama.cpp issue #25814" in capsys.readouterr().err


def test_vision_backends_bench_times_what_runs_here(siglip_mmproj_bundle, clip_mmproj_bundle,
                                                    tmp_path):
    from llava_edge.benchmarks.vision_backends import main

    assert main([str(siglip_mmproj_bundle), "--out", str(tmp_path), "--repeats", "2",
                 "--threads", "1"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"onnx fp32", "mtmd mmproj-F16.gguf"}
    assert rows["onnx fp32"]["relative_error_to_exact"] == 0
    mtmd = rows["mtmd mmproj-F16.gguf"]
    assert mtmd["on"] == "CPU (llama.cpp mtmd)" and len(mtmd["runs_ms"]) == 2
    assert mtmd["cosine_min_to_exact"] >= 0.999 and mtmd["median_ms"] > 0
    assert report["auto_choice"]["backend"] == "onnx" and report["views"] == 1
    from llava_edge.benchmarks.vision_backends import bench_vision_backends

    clip = {r["backend"]: r for r in bench_vision_backends(clip_mmproj_bundle, 0, 1, 1)["rows"]}
    assert "llama.cpp issue #25814" in clip["mtmd mmproj-F16.gguf"]["not_here"]
