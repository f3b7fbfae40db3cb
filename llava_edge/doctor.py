"""``llava-edge doctor``: what this machine offers and what llava-edge will use on it.

Each part of the report comes from one probe (CPU, llama.cpp, ONNX Runtime, torch,
TensorRT, CUDA, GPUs, optionally a bundle). A probe never raises: a package that is not
installed gives None, one that fails gives its ``error``. :func:`diagnose` takes every
part as a parameter, probing this machine only for those left at :data:`PROBE`, and
:func:`warnings_for` derives the warnings (each with its fix) from the parts alone, so
both can describe another machine (tests, bug reports).

Torch-free: torch and TensorRT are imported only when installed, to read their versions.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from llava_edge.cpu_features import CpuInfo, this_cpu, vision_graph_warning

# Default of diagnose()'s parameters: "probe this machine" (None is a real value there:
# torch or TensorRT not installed, no bundle).
PROBE: Any = object()

# llama.cpp backends that run on a GPU, upper-cased: the new system-info format names
# backends ("CUDA : ARCHS = 890 | ..."), the old one had flags ("CUBLAS = 1").
_LLAMA_GPU_BACKENDS = {"CUDA", "METAL", "VULKAN", "SYCL", "ROCM", "HIP", "MUSA", "CANN",
                       "KOMPUTE", "OPENCL", "CUBLAS", "HIPBLAS", "CLBLAST"}
# llama.cpp's CPU build flags and the CpuInfo feature each needs: a build with a flag the
# CPU lacks dies with "Illegal instruction" on the first model that reaches that kernel.
_LLAMA_ISA_NEEDS = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c",
                    "AVX512": "avx512f", "AVX512_VNNI": "avx512_vnni",
                    "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni",
                    "AMX_INT8": "amx_int8", "DOTPROD": "dotprod", "MATMUL_INT8": "i8mm",
                    "SVE": "sve"}
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The pip distributions that install the `onnxruntime` module (they overwrite each other).
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                      "onnxruntime-openvino")
_LLAMA_CUDA_FIX = ("rebuild llama-cpp-python with CUDA: `LLAVA_EDGE_CUDA=1 make setup`, or "
                   "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --no-cache-dir --force-reinstall "
                   "llama-cpp-python (Jetson Orin: add -DCMAKE_CUDA_ARCHITECTURES=87)")
_ORT_GPU_FIX = ("pip uninstall onnxruntime && pip install 'llava-edge[gpu]' (onnxruntime-gpu; "
                "on a Jetson, NVIDIA's JetPack wheel)")


@dataclass(frozen=True)
class LlamaCppInfo:
    version: str | None
    system_info: str | None     # llama_print_system_info(): backends and CPU build flags
    gpu_offload: bool           # llama_supports_gpu_offload(): layers can go to a GPU
    backends: list[str] = field(default_factory=list)      # as system_info names them
    gpu_backends: list[str] = field(default_factory=list)
    cpu_flags: list[str] = field(default_factory=list)     # CPU build flags set to 1
    error: str | None = None

    @classmethod
    def from_system_info(cls, system_info: str, version: str | None = None,
                         gpu_offload: bool = False) -> "LlamaCppInfo":
        backends, cpu = parse_system_info(system_info)
        flags = [k for k, v in cpu.items() if v == "1"]
        gpu = [b for b in backends if b.upper() in _LLAMA_GPU_BACKENDS]
        gpu += [k for k in flags if k.upper() in _LLAMA_GPU_BACKENDS]  # the old format
        return cls(version=version, system_info=system_info, gpu_offload=gpu_offload,
                   backends=backends, gpu_backends=gpu,
                   cpu_flags=[k for k in flags if k.upper() not in _LLAMA_GPU_BACKENDS])


@dataclass(frozen=True)
class OrtInfo:
    version: str | None
    providers: list[str]                # ort.get_available_providers()
    auto_providers: list[str]           # choose_providers("auto"): what the runtime uses
    distributions: list[str] = field(default_factory=list)  # pip packages providing it
    error: str | None = None


@dataclass(frozen=True)
class TorchInfo:
    version: str | None
    cuda_available: bool = False
    cuda_version: str | None = None     # torch.version.cuda: None for a CPU build
    error: str | None = None


@dataclass(frozen=True)
class CudaInfo:
    driver_version: str | None = None   # nvidia-smi
    driver_cuda: str | None = None      # the newest CUDA the driver runs (nvidia-smi)
    toolkit: str | None = None          # nvcc --version
    l4t: str | None = None              # Jetson Linux release (/etc/nv_tegra_release)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_mib: int | None              # None: unknown or shared with the CPU (Jetson)
    source: str = "nvidia-smi"


@dataclass(frozen=True)
class BundleChoice:
    """What the runtime picks from a bundle by default (``LlavaEdge.load(path)``)."""

    path: str
    vision_file: str
    vision_precision: str
    llm_file: str
    llm_quant: str
    providers: list[str]                # ONNX Runtime providers for the vision graph
                                        # (empty for a TensorRT engine)
    vision_precisions: list[str]        # all the bundle holds
    llm_quants: list[str]
    graph_warnings: dict[str, str] = field(default_factory=dict)  # file -> warning
    tune_profile: str | None = None     # the `llava-edge tune` profile load() applies
    tune_note: str = ""                 # which profile applies, or why none does
    tuned_settings: dict = field(default_factory=dict)
    vision_backend: str = "onnx"        # "onnx" (ONNX Runtime) or "tensorrt" (an engine)
    vision_reason: str = ""             # why that backend and graph
    vision_passed_over: list[str] = field(default_factory=list)  # faster ones, why not


@dataclass(frozen=True)
class DoctorWarning:
    what: str
    fix: str


@dataclass(frozen=True)
class DoctorReport:
    cpu: CpuInfo
    python: str
    platform: str
    llama_cpp: LlamaCppInfo
    onnxruntime: OrtInfo
    torch: TorchInfo | None             # None: not installed
    tensorrt: str | None                # its version ("unusable (...)" when the import
                                        # fails); None: not installed
    cuda: CudaInfo | None               # None: no driver or toolkit found
    gpus: list[GpuInfo]
    bundle: BundleChoice | None
    warnings: list[DoctorWarning]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu"] = self.cpu.to_dict()  # with its derived fields (isa_class, int8_kernel)
        return d


def diagnose(cpu: CpuInfo = PROBE, gpus: list[GpuInfo] = PROBE,
             llama: LlamaCppInfo = PROBE, ort: OrtInfo = PROBE,
             torch: TorchInfo | None = PROBE, tensorrt: str | None = PROBE,
             cuda: CudaInfo | None = PROBE, bundle: str | Path | None = None) -> DoctorReport:
    """The report for this machine; a part passed in stands in for its probe. ``bundle``:
    also say what the runtime picks from it (raises :class:`BundleError` if unreadable)."""
    cpu = this_cpu() if cpu is PROBE else cpu
    ort = probe_onnxruntime() if ort is PROBE else ort
    # The bundle first: a bad path is the user's error, reported before the slower probes.
    choice = bundle_choice(bundle, cpu, ort.auto_providers) if bundle is not None else None
    gpus = probe_gpus() if gpus is PROBE else gpus
    llama = probe_llama_cpp() if llama is PROBE else llama
    torch = probe_torch() if torch is PROBE else torch
    return DoctorReport(
        cpu=cpu, python=f"{platform.python_version()} ({sys.executable})",
        platform=platform.platform(),
        llama_cpp=llama, onnxruntime=ort, torch=torch,
        tensorrt=probe_tensorrt() if tensorrt is PROBE else tensorrt,
        cuda=probe_cuda() if cuda is PROBE else cuda, gpus=gpus, bundle=choice,
        warnings=warnings_for(cpu, gpus, llama, ort, torch, choice))


def warnings_for(cpu: CpuInfo, gpus: list[GpuInfo], llama: LlamaCppInfo, ort: OrtInfo,
                 torch: TorchInfo | None = None,
                 bundle: BundleChoice | None = None) -> list[DoctorWarning]:
    """What on this machine makes llava-edge slower, wrong or crash, each with its fix."""
    out: list[DoctorWarning] = []
    for name, error in (("llama-cpp-python", llama.error), ("onnxruntime", ort.error)):
        if error:
            out.append(DoctorWarning(f"{name} cannot be used here ({error}): the runtime "
                                     "needs it", "`make setup`, or pip install -e . in this "
                                     "environment"))
    gpu_names = ", ".join(g.name for g in gpus)
    if gpus and llama.error is None and not llama.gpu_offload:
        out.append(DoctorWarning(
            f"llama.cpp (llama-cpp-python {llama.version}) is built without GPU support, "
            f"but this machine has a GPU ({gpu_names}): the language model runs on the CPU",
            _LLAMA_CUDA_FIX))
    # Only features this CpuInfo describes (its architecture's table), and only when it
    # read any: an unreadable /proc/cpuinfo must not read as "lacks everything".
    known = cpu.features if any(cpu.features.values()) else {}
    lacking = [f for f in llama.cpu_flags
               if _LLAMA_ISA_NEEDS.get(f) in known and not known[_LLAMA_ISA_NEEDS[f]]]
    if lacking:
        out.append(DoctorWarning(
            f"llama.cpp is built for {', '.join(lacking)}, which this CPU "
            f"({cpu.model or cpu.arch}) lacks: it dies with \"Illegal instruction\" when a "
            "model reaches those kernels",
            "rebuild it for this CPU: `make setup` (scripts/llama_cmake_args.sh picks this "
            "CPU's extensions)"))
    if (known.get("amx_int8") and known.get("avx512_vnni") and llama.error is None
            and llama.cpu_flags and "AMX_INT8" not in llama.cpu_flags):
        out.append(DoctorWarning(
            f"llama.cpp is built without its AMX kernels, which this CPU "
            f"({cpu.model or cpu.arch}) has: quantized GGUFs (Q4_0, Q4_K_M, Q8_0, ...) prefill and decode "
            "slower than they could (tinyllava-1.1b on a 2-core AMX Xeon: Q4_K_M first-token "
            "prefill 1.4x, Q8_0 2.3x, Q4_0 decode 1.7x slower without them)",
            "rebuild it: `make setup` builds them where scripts/amx_probe.sh runs a tile "
            "multiply (run it to see why not)"))
    if gpus and ort.error is None and not any(p in ort.providers for p in _GPU_PROVIDERS):
        out.append(DoctorWarning(
            f"ONNX Runtime {ort.version} has no GPU provider ({', '.join(ort.providers)}), "
            f"but this machine has a GPU ({gpu_names}): the vision graph runs on the CPU",
            _ORT_GPU_FIX))
    if len(ort.distributions) > 1:
        out.append(DoctorWarning(
            f"{' and '.join(ort.distributions)} are installed together; they overwrite each "
            "other's files, so which one runs is an accident",
            "uninstall all of them, then install one: "
            + ("'llava-edge[gpu]' (onnxruntime-gpu)" if gpus else "onnxruntime")))
    if cpu.int8_saturates:
        out.append(DoctorWarning(
            f"this CPU ({cpu.isa_class}) has no VNNI: ONNX Runtime's int8 kernels add u8 x s8 "
            "product pairs into a saturating int16 here, so int8 / int4 vision graphs with "
            "full-range int8 weights (made by llava-edge before 7-bit weights) lose accuracy, "
            "and int8 runs slower than on a CPU with VNNI",
            "re-export such bundles with this llava-edge, or run the fp32 / fp16 graph "
            "(--vision-precision fp32)"))
    if gpus and torch is not None and torch.error is None and torch.cuda_version is None:
        out.append(DoctorWarning(
            f"torch {torch.version} is a CPU build, but this machine has a GPU ({gpu_names}): "
            "training and export run on the CPU",
            "pip install torch --index-url https://download.pytorch.org/whl/cu126 (the CUDA "
            "version your driver runs; README \"GPU set-ups\")"))
    if bundle is not None:
        safe = [p for p in bundle.vision_precisions if p in ("fp32", "fp16")]
        for file, message in bundle.graph_warnings.items():
            picked = " (the runtime's default)" if file == bundle.vision_file else ""
            out.append(DoctorWarning(
                f"{bundle.path}: {message}{picked}",
                f"llava-edge run {bundle.path} --vision-precision {safe[0]}" if safe
                else "re-export the bundle with this llava-edge"))
    return out


# -- probes ------------------------------------------------------------------------------

def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def parse_system_info(text: str) -> tuple[list[str], dict[str, str]]:
    """(backend names, the CPU backend's flags) from llama.cpp's system-info string:
    ``"CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 |"``. The old format
    (no backend names, ``"AVX = 1 | ... | CUBLAS = 1 |"``) gives no names and all flags."""
    backends: list[str] = []
    flags: dict[str, dict[str, str]] = {}
    current = ""
    for piece in text.split("|"):
        piece = piece.strip()
        if " : " in piece or piece.endswith(" :"):
            current, _, piece = (s.strip() for s in piece.partition(":"))
            backends.append(current)
        key, eq, value = piece.partition("=")
        if eq:
            flags.setdefault(current, {})[key.strip()] = value.strip()
    cpu = next((f for name, f in flags.items() if name.upper() == "CPU"), flags.get("", {}))
    return backends, cpu


def probe_llama_cpp() -> LlamaCppInfo:
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
        return LlamaCppInfo.from_system_info(
            info.strip(), version=getattr(llama_cpp, "__version__", None),
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))
    except Exception as e:  # noqa: BLE001 - not installed, or a library that will not load
        return LlamaCppInfo(version=None, system_info=None, gpu_offload=False, error=_error(e))


def probe_onnxruntime() -> OrtInfo:
    dists = []
    for name in _ORT_DISTRIBUTIONS:
        try:
            metadata.version(name)
            dists.append(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        from llava_edge.runtimes.vision_onnx import choose_providers

        return OrtInfo(version=ort.__version__, providers=list(ort.get_available_providers()),
                       auto_providers=choose_providers("auto"), distributions=dists)
    except Exception as e:  # noqa: BLE001
        return OrtInfo(version=None, providers=[], auto_providers=[], distributions=dists,
                       error=_error(e))


def probe_torch() -> TorchInfo | None:
    # find_spec first: importing torch costs seconds and must not happen where it is absent.
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        return TorchInfo(version=torch.__version__, cuda_available=torch.cuda.is_available(),
                         cuda_version=torch.version.cuda)
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA build that cannot find its libraries
        return TorchInfo(version=None, error=_error(e))


def probe_tensorrt() -> str | None:
    try:
        if importlib.util.find_spec("tensorrt") is None:
            return None
        import tensorrt

        return str(tensorrt.__version__)
    except Exception as e:  # noqa: BLE001
        return f"unusable ({_error(e)})"


def _run(*cmd: str) -> str | None:
    """stdout of ``cmd``, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_nvidia_smi(csv: str) -> list[GpuInfo]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``
    (a Jetson says "[N/A]" for memory: it shares the system's)."""
    gpus = []
    for line in csv.splitlines():
        name, _, memory = line.strip().rpartition(",")
        if name.strip():
            memory = memory.strip()
            gpus.append(GpuInfo(name=name.strip(),
                                memory_mib=int(memory) if memory.isdigit() else None))
    return gpus


def probe_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs: nvidia-smi, else the driver's /proc files, else a Jetson's release file."""
    csv = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    if csv and (gpus := parse_nvidia_smi(csv)):
        return gpus
    gpus = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            model = re.search(r"^Model:\s*(.+)$", info.read_text(), re.M)
        except OSError:
            continue
        gpus.append(GpuInfo(name=model.group(1).strip() if model else "NVIDIA GPU",
                            memory_mib=None, source="/proc/driver/nvidia"))
    if not gpus and Path("/etc/nv_tegra_release").is_file():
        try:
            name = Path("/proc/device-tree/model").read_text().strip("\x00 \n")
        except OSError:
            name = ""
        gpus.append(GpuInfo(name=name or "NVIDIA Jetson", memory_mib=None, source="jetson"))
    return gpus


def probe_cuda() -> CudaInfo | None:
    smi = _run("nvidia-smi") or ""
    driver = re.search(r"Driver Version:\s*(\S+)", smi)
    driver_cuda = re.search(r"CUDA Version:\s*(\S+)", smi)
    nvcc = _run("nvcc", "--version") or _run("/usr/local/cuda/bin/nvcc", "--version") or ""
    toolkit = re.search(r"release ([\d.]+)", nvcc)
    l4t = None
    try:
        head = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
        rel, rev = re.search(r"R(\d+)", head), re.search(r"REVISION:\s*([\d.]+)", head)
        l4t = f"R{rel.group(1)}.{rev.group(1)}" if rel and rev else head.strip("# ")
    except (OSError, IndexError):
        pass
    info = CudaInfo(driver_version=driver.group(1) if driver else None,
                    driver_cuda=driver_cuda.group(1) if driver_cuda else None,
                    toolkit=toolkit.group(1) if toolkit else None, l4t=l4t)
    return info if any(asdict(info).values()) else None


def bundle_choice(path: str | Path, cpu: CpuInfo, providers: list[str]) -> BundleChoice:
    """What ``LlavaEdge.load(path)`` picks: the vision backend and graph
    (:func:`~llava_edge.runtimes.vision_backend.choose_vision` over this machine's tune
    profile, if any, and ``providers``, ONNX Runtime's auto choice) and the GGUF."""
    from llava_edge.bundle import open_bundle
    from llava_edge.runtimes.tune.profile import lookup
    from llava_edge.runtimes.vision_backend import choose_vision

    b = open_bundle(path, verify="size")  # sizes only: hashing GBs is load's job, not ours
    found = lookup(b.path)
    tuned = found.profile.settings if found.profile else None
    v = choose_vision(b.manifest, b.path, tuned.vision_precision if tuned else None,
                      tuned.providers if tuned else None, available_providers=list(providers))
    lm = b.llm_entry(tuned.llm_quant if tuned else None)
    warnings = {e.file: w for e in b.manifest.vision if (w := vision_graph_warning(e, cpu))}
    return BundleChoice(path=str(path), vision_file=v.file, vision_precision=v.precision,
                        llm_file=lm.file, llm_quant=lm.quant, providers=list(v.providers),
                        vision_backend=v.backend, vision_reason=v.reason,
                        vision_passed_over=list(v.passed_over),
                        vision_precisions=b.vision_precisions, llm_quants=b.llm_quants,
                        graph_warnings=warnings,
                        tune_profile=str(found.path) if found.path else None,
                        tune_note=found.note, tuned_settings=tuned.chosen() if tuned else {})
