"""``llava-edge doctor``: the report on this machine, the warnings other machines trigger
(faked parts), and what the runtime picks from a bundle."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from llava_edge import doctor
from llava_edge.cli import run
from llava_edge.cpu_features import cpu_info
from llava_edge.doctor import (GpuInfo, LlamaCppInfo, OrtInfo, TorchInfo, diagnose,
                               parse_nvidia_smi, parse_system_info, warnings_for)

AVX2 = cpu_info("avx avx2 fma", arch="x86_64", cores=2)  # no VNNI: int8 saturates
VNNI = cpu_info("avx avx2 fma f16c avx512f avx512bw avx512_vnni", arch="x86_64", cores=8)
ARM = cpu_info("fp asimd asimddp asimdhp i8mm", arch="aarch64", cores=6)
A100 = [GpuInfo("NVIDIA A100-SXM4-80GB", 81920)]

LLAMA_CPU = LlamaCppInfo.from_system_info(
    "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 | LLAMAFILE = 1 |", "0.3.36")
LLAMA_CUDA = LlamaCppInfo.from_system_info(
    "CUDA : ARCHS = 800 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : AVX = 1 | AVX2 = 1 | FMA = 1 |", "0.3.36", gpu_offload=True)
LLAMA_ARM = LlamaCppInfo.from_system_info(
    "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | MATMUL_INT8 = 1 |", "0.3.36")
ORT_CPU = OrtInfo("1.22.0", ["AzureExecutionProvider", "CPUExecutionProvider"],
                  ["CPUExecutionProvider"], ["onnxruntime"])
ORT_GPU = OrtInfo("1.22.0", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                             "CPUExecutionProvider"],
                  ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                  ["onnxruntime-gpu"])
# Everything but the CPU, GPUs and bundle faked: no probe runs, the test is fast.
FAKE = dict(llama=LLAMA_CPU, ort=ORT_CPU, torch=None, tensorrt=None, cuda=None)


def _whats(warnings) -> str:
    return "\n".join(w.what for w in warnings)


def _doctor_json(capsys, *args) -> dict:
    assert run(["doctor", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- this machine ------------------------------------------------------------------------

def test_json_on_this_machine(capsys):
    d = _doctor_json(capsys)
    assert set(d) >= {"cpu", "python", "platform", "llama_cpp", "onnxruntime", "torch",
                      "tensorrt", "cuda", "gpus", "warnings", "bundle"}
    assert d["cpu"]["cores"] >= 1 and d["cpu"]["isa_class"] and isinstance(d["cpu"]["features"],
                                                                           dict)
    llama = d["llama_cpp"]
    assert llama["error"] is None and llama["version"] and isinstance(llama["gpu_offload"], bool)
    assert "CPU" in llama["backends"] and isinstance(llama["cpu_flags"], list)
    ort = d["onnxruntime"]
    assert ort["error"] is None and ort["version"] and "CPUExecutionProvider" in ort["providers"]
    assert ort["auto_providers"][-1] == "CPUExecutionProvider"
    assert d["torch"] is None or isinstance(d["torch"]["version"], str)
    assert isinstance(d["gpus"], list) and d["bundle"] is None
    assert all(set(w) == {"what", "fix"} for w in d["warnings"])
    # This machine's own warnings are those warnings_for derives from its own facts.
    assert (d["cpu"]["int8_saturates"]
            == any("no VNNI" in w["what"] for w in d["warnings"]))


def test_plain_output_has_every_section(capsys):
    assert run(["doctor"]) == 0
    out = capsys.readouterr().out
    # Rows are "<key right-aligned>  <value>"; warnings follow as "  - what" / "    fix: ...".
    keys = [m[1] for m in re.finditer(r"^ *(\S+)  \S", out, re.M)]
    for section in ("cpu", "python", "llama.cpp", "onnxruntime", "torch", "tensorrt", "cuda",
                    "gpus", "warnings"):
        assert section in keys, (section, out)
    assert "bundle" not in keys


def test_runs_without_torch_or_transformers():
    """The runtime install: torch and transformers absent; the CLI does not import them."""
    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None\n"
            "from llava_edge.cli import run\n"
            "sys.exit(run(['doctor', '--json']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["torch"] is None
    imports = subprocess.run([sys.executable, "-c", "import sys, llava_edge.cli.doctor_cmd; "
                              "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert imports.stdout.strip() == "False"


# -- warnings from faked machines --------------------------------------------------------

def test_gpu_with_llama_cpp_built_for_cpu_only():
    warnings = warnings_for(VNNI, A100, LLAMA_CPU, ORT_GPU)
    assert len(warnings) == 1
    assert "llama.cpp" in warnings[0].what and "NVIDIA A100" in warnings[0].what
    assert "LLAVA_EDGE_CUDA=1 make setup" in warnings[0].fix and "GGML_CUDA=on" in warnings[0].fix
    assert warnings_for(VNNI, A100, LLAMA_CUDA, ORT_GPU) == []
    assert warnings_for(VNNI, [], LLAMA_CPU, ORT_CPU) == []  # no GPU, nothing to offload to


def test_gpu_with_cpu_only_onnxruntime():
    warnings = warnings_for(VNNI, A100, LLAMA_CUDA, ORT_CPU)
    assert len(warnings) == 1 and "ONNX Runtime 1.22.0 has no GPU provider" in warnings[0].what
    assert "onnxruntime-gpu" in warnings[0].fix and "llava-edge[gpu]" in warnings[0].fix


def test_int8_warning_only_on_a_cpu_without_vnni():
    report = diagnose(cpu=AVX2, gpus=[], **FAKE)
    (warning,) = report.warnings
    assert "x86-64 avx2 (no vnni)" in warning.what and "saturat" in warning.what
    assert "fp32" in warning.fix and "re-export" in warning.fix
    assert diagnose(cpu=VNNI, gpus=[], **FAKE).warnings == []


def test_an_arm_machine():
    report = diagnose(cpu=ARM, gpus=[GpuInfo("Orin (nvgpu)", None, "jetson")],
                      **FAKE | {"llama": LLAMA_ARM})
    d = json.loads(json.dumps(report.to_dict()))
    assert d["cpu"]["isa_class"] == "aarch64 i8mm" and d["cpu"]["int8_saturates"] is False
    assert d["cpu"]["features"]["dotprod"] and d["llama_cpp"]["cpu_flags"][:1] == ["NEON"]
    whats = _whats(report.warnings)
    assert "VNNI" not in whats and "Illegal instruction" not in whats
    assert "llama.cpp (llama-cpp-python 0.3.36) is built without GPU support" in whats


def test_llama_cpp_built_for_an_isa_the_cpu_lacks():
    avx512_build = LlamaCppInfo.from_system_info("CPU : AVX = 1 | AVX2 = 1 | AVX512 = 1 |")
    assert warnings_for(VNNI, [], avx512_build, ORT_CPU) == []  # VNNI has avx512f
    whats = _whats(warnings_for(AVX2, [], avx512_build, ORT_CPU))
    assert "built for AVX512" in whats and "Illegal instruction" in whats
    # A CPU whose flags could not be read is not taken to lack everything.
    unread = cpu_info("", arch="x86_64", cores=1)
    assert warnings_for(unread, [], avx512_build, ORT_CPU) == []


def test_an_amx_cpu_with_llama_cpp_built_without_amx():
    amx = cpu_info("avx avx2 fma f16c avx512f avx512bw avx512_vnni amx_tile amx_int8",
                   arch="x86_64", cores=2)
    plain = LlamaCppInfo.from_system_info(
        "CPU : AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |")
    (warning,) = warnings_for(amx, [], plain, ORT_CPU)
    assert "without its AMX kernels" in warning.what and "make setup" in warning.fix
    assert "amx_probe.sh" in warning.fix
    built = LlamaCppInfo.from_system_info(
        "CPU : AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |")
    assert warnings_for(amx, [], built, ORT_CPU) == []
    assert warnings_for(VNNI, [], plain, ORT_CPU) == []  # no AMX here: nothing to miss


def test_broken_or_doubled_packages():
    broken_llama = LlamaCppInfo(None, None, False, error="OSError: libllama.so: cannot open")
    broken_ort = OrtInfo(None, [], [], [], error="ImportError: DLL load failed")
    whats = _whats(warnings_for(VNNI, A100, broken_llama, broken_ort))
    assert "llama-cpp-python cannot be used here (OSError" in whats
    assert "onnxruntime cannot be used here (ImportError" in whats
    assert "built without GPU support" not in whats  # unknown, not "without"
    both = OrtInfo("1.22.0", ORT_GPU.providers, ORT_GPU.auto_providers,
                   ["onnxruntime", "onnxruntime-gpu"])
    (warning,) = warnings_for(VNNI, A100, LLAMA_CUDA, both)
    assert "onnxruntime and onnxruntime-gpu are installed together" in warning.what


def test_torch_cpu_build_on_a_gpu_machine():
    cpu_torch, cuda_torch = TorchInfo("2.7.0+cpu"), TorchInfo("2.7.0+cu126", True, "12.6")
    (warning,) = warnings_for(VNNI, A100, LLAMA_CUDA, ORT_GPU, cpu_torch)
    assert "torch 2.7.0+cpu is a CPU build" in warning.what and "cu126" in warning.fix
    assert warnings_for(VNNI, A100, LLAMA_CUDA, ORT_GPU, cuda_torch) == []
    assert warnings_for(VNNI, [], LLAMA_CUDA, ORT_CPU, cuda_torch) == []  # CUDA torch, no GPU


def test_a_failing_probe_gives_its_error(monkeypatch):
    import llama_cpp
    import onnxruntime

    def boom():
        raise OSError("the library will not load")

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", boom)
    monkeypatch.setattr(onnxruntime, "get_available_providers", boom)
    llama, ort = doctor.probe_llama_cpp(), doctor.probe_onnxruntime()
    assert llama.version is None and llama.error == "OSError: the library will not load"
    assert ort.version is None and ort.error == "OSError: the library will not load"
    assert ort.distributions  # still says which package is installed
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed at all
    assert doctor.probe_llama_cpp().error.startswith("ModuleNotFoundError")
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    assert doctor.probe_torch() is None and doctor.probe_tensorrt() is None


# -- parsers ------------------------------------------------------------------------------

def test_parse_llama_cpp_system_info():
    assert LLAMA_CUDA.backends == ["CUDA", "CPU"] and LLAMA_CUDA.gpu_backends == ["CUDA"]
    assert LLAMA_CUDA.cpu_flags == ["AVX", "AVX2", "FMA"]  # the CPU backend's only
    assert LLAMA_CPU.gpu_backends == [] and "LLAMAFILE" in LLAMA_CPU.cpu_flags
    metal = LlamaCppInfo.from_system_info("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | "
                                          "ARM_FMA = 1 | ACCELERATE = 1 |", gpu_offload=True)
    assert metal.gpu_backends == ["Metal"] and metal.cpu_flags[0] == "NEON"
    # The format before llama.cpp named its backends.
    backends, cpu = parse_system_info("AVX = 1 | AVX2 = 1 | AVX512 = 0 | CUBLAS = 1 |")
    assert backends == [] and cpu == {"AVX": "1", "AVX2": "1", "AVX512": "0", "CUBLAS": "1"}
    old = LlamaCppInfo.from_system_info("AVX = 1 | AVX2 = 1 | AVX512 = 0 | CUBLAS = 1 |")
    assert old.gpu_backends == ["CUBLAS"] and old.cpu_flags == ["AVX", "AVX2"]
    assert parse_system_info("") == ([], {})


def test_parse_nvidia_smi():
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564\nOrin (nvgpu), [N/A]\n\n")
    assert gpus == [GpuInfo("NVIDIA GeForce RTX 4090", 24564), GpuInfo("Orin (nvgpu)", None)]


# -- bundles -----------------------------------------------------------------------------

def test_doctor_bundle_names_what_the_runtime_picks(tiny_bundle, capsys):
    from llava_edge.runtimes.pipeline import LlavaEdge

    b = _doctor_json(capsys, str(tiny_bundle))["bundle"]
    with LlavaEdge.load(tiny_bundle, n_threads=1) as model:  # what the runtime really loads
        assert (b["vision_precision"], b["llm_quant"]) == (model.vision_precision,
                                                           model.llm_quant)
        assert b["providers"] == model.vision.providers
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert b["vision_file"] == next(v["file"] for v in manifest["vision"]
                                    if v["precision"] == model.vision_precision)
    assert b["llm_file"] == next(m["file"] for m in manifest["llm"]
                                 if m["quant"] == model.llm_quant)
    assert b["graph_warnings"] == {}  # this llava-edge's int8 graph: 7-bit weights
    assert run(["doctor", str(tiny_bundle)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.lstrip().startswith("bundle"))
    assert b["vision_file"] in line and b["llm_file"] in line


def test_old_int8_graph_on_a_saturating_cpu(old_int8_bundle, monkeypatch, capsys):
    """A bundle from before 7-bit weights (its int8 method has no reduce_range)."""
    bundle = old_int8_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    int8 = next(v for v in manifest["vision"] if v["precision"] == "int8")

    report = diagnose(cpu=AVX2, gpus=[], bundle=bundle, **FAKE)
    assert list(report.bundle.graph_warnings) == [int8["file"]]
    (warning,) = [w for w in report.warnings if int8["file"] in w.what]
    assert str(bundle) in warning.what
    assert warning.fix == f"llava-edge run {bundle} --vision-precision fp32"
    assert not [w for w in diagnose(cpu=VNNI, gpus=[], bundle=bundle, **FAKE).warnings
                if int8["file"] in w.what]

    monkeypatch.setattr(doctor, "this_cpu", lambda: AVX2)  # the CLI on such a CPU
    assert run(["doctor", str(bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the wrapping
    assert f"vision graph {int8['file']} (int8) has full-range int8" in out


def test_a_bad_bundle_path_is_a_user_error(tmp_path, capsys):
    assert run(["doctor", str(tmp_path / "nope")]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert run(["doctor", str(tmp_path)]) == 1  # a directory without a manifest
    assert "manifest.json is missing" in capsys.readouterr().err
