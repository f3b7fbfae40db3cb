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
