"""What this CPU offers: architecture, model, cores and the instruction sets that decide
which kernels llama.cpp and ONNX Runtime run (and whether int8 arithmetic can saturate).

Read from ``/proc/cpuinfo`` on Linux (x86 ``flags``, Arm ``Features``), ``sysctl`` on
macOS; no compiled helper and no third-party package, so the torch-free runtime can use
it. Pass ``flags=`` to :func:`cpu_info` to describe another machine (tests, reports).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The features reported, as (name shown, flag names that mean it). x86 names are the
# Linux kernel's /proc/cpuinfo flags; Arm names are its "Features" words (asimd = NEON).
X86_FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sse4_2", ("sse4_2",)),
    ("avx", ("avx",)),
    ("avx2", ("avx2",)),
    ("fma", ("fma",)),
    ("f16c", ("f16c",)),
    ("avx512f", ("avx512f",)),
    ("avx512bw", ("avx512bw",)),
    ("avx512_vnni", ("avx512_vnni",)),
    ("avx_vnni", ("avx_vnni",)),
    ("avx512_bf16", ("avx512_bf16",)),
    ("amx_int8", ("amx_int8",)),
    ("amx_bf16", ("amx_bf16",)),
)
ARM_FEATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("neon", ("asimd", "neon")),
    ("dotprod", ("asimddp",)),
    ("i8mm", ("i8mm",)),
    ("bf16", ("bf16",)),
    ("sve", ("sve",)),
    ("fp16", ("fphp", "asimdhp")),
)
# macOS sysctl keys (hw.optional.*) for the same Arm features.
_MACOS_ARM = {"neon": "hw.optional.neon", "dotprod": "hw.optional.arm.FEAT_DotProd",
              "i8mm": "hw.optional.arm.FEAT_I8MM", "bf16": "hw.optional.arm.FEAT_BF16",
              "fp16": "hw.optional.arm.FEAT_FP16"}


@dataclass(frozen=True)
class CpuInfo:
    arch: str                      # platform.machine(): x86_64, aarch64, arm64, ...
    model: str | None              # "AMD EPYC", "Intel(R) Xeon(R) ...", None when unknown
    cores: int                     # logical CPUs this process may use
    features: dict[str, bool] = field(default_factory=dict)  # X86_FEATURES / ARM_FEATURES

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64") or self.arch.lower().startswith("arm")

    def has(self, feature: str) -> bool:
        return bool(self.features.get(feature))

    @property
    def int8_kernel(self) -> str:
        """The integer dot product ONNX Runtime's u8 x s8 GEMM (MLAS) uses on this CPU.

        - ``vnni``: AVX512-VNNI / AVX-VNNI ``vpdpbusd`` (or AMX): products summed in int32;
        - ``pmaddubsw``: AVX2 or AVX-512BW without VNNI: ``vpmaddubsw`` adds each pair of
          u8 x s8 products into an int16 *with saturation*, so a pair sum over 32,767 is
          clipped (255 * 127 * 2 = 64,770 can occur with full-range int8 weights);
        - ``widening``: older x86 (SSE) widens both operands to int16 and uses ``pmaddwd``;
        - ``arm``: NEON / dotprod / i8mm kernels accumulate in int32;
        - ``other``: an architecture not described here.
        """
        if self.is_x86:
            if self.has("avx512_vnni") or self.has("avx_vnni") or self.has("amx_int8"):
                return "vnni"
            if self.has("avx2") or self.has("avx512bw"):
                return "pmaddubsw"
            return "widening"
        if self.is_arm:
            return "arm"
        return "other"

    @property
    def int8_saturates(self) -> bool:
        """Whether full-range (8-bit) int8 weights can saturate in ONNX Runtime's u8s8 GEMM
        here; 7-bit weights (``reduce_range``) cannot: 255 * 64 * 2 = 32,640 <= 32,767."""
        return self.int8_kernel == "pmaddubsw"

    @property
    def isa_class(self) -> str:
        """A short name for the kernel class figures measured here hold for, e.g.
        ``x86-64 avx2 (no vnni)``, ``x86-64 avx512 vnni``, ``aarch64 dotprod``."""
        if self.is_x86:
            width = "avx512" if self.has("avx512f") else "avx2" if self.has("avx2") else "sse"
            vnni = "vnni" if self.int8_kernel == "vnni" else "(no vnni)"
            return f"x86-64 {width} {vnni}"
        if self.is_arm:
            best = "i8mm" if self.has("i8mm") else "dotprod" if self.has("dotprod") else "neon"
            return f"aarch64 {best}"
        return self.arch

    def to_dict(self) -> dict:
        return {"arch": self.arch, "model": self.model, "cores": self.cores,
                "features": dict(self.features), "isa_class": self.isa_class,
                "int8_kernel": self.int8_kernel, "int8_saturates": self.int8_saturates}


def cpu_info(flags: str | list[str] | None = None, arch: str | None = None,
             model: str | None = None, cores: int | None = None) -> CpuInfo:
    """This machine's CPU; or, with ``flags`` (and ``arch``), a CPU described by them."""
    arch = arch or platform.machine() or "unknown"
    if flags is None:
        found_model, words = _read_cpuinfo()
        model = model or found_model
    else:
        words = set(flags.split() if isinstance(flags, str) else flags)
    table = X86_FEATURES if arch.lower() in ("x86_64", "amd64", "i686", "i386") else ARM_FEATURES
    features = {name: any(w in words for w in names) for name, names in table}
    if flags is None and platform.system() == "Darwin":
        model, features = _macos(arch, model, features)
    return CpuInfo(arch=arch, model=model, cores=cores or _cores(), features=features)


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """:func:`cpu_info` of this machine, read once per process."""
    return cpu_info()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, flag words) from /proc/cpuinfo's first processor."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None, set()
    model, words = None, set()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not words:
            words = set(value.split())
        elif not line.strip() and words:
            break  # the first processor is enough
    return model, words


def _macos(arch: str, model: str | None, features: dict[str, bool]):
    def sysctl(key: str) -> str | None:
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True,
                                 timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    model = model or sysctl("machdep.cpu.brand_string")
    if arch.lower() in ("arm64", "aarch64"):
        features = {name: sysctl(_MACOS_ARM[name]) == "1" if name in _MACOS_ARM else False
                    for name in features}
    else:
        words = set((sysctl("machdep.cpu.features") or "").lower().split()) | \
            set((sysctl("machdep.cpu.leaf7_features") or "").lower().split())
        alias = {"avx2": "avx2", "avx": "avx1.0", "fma": "fma", "f16c": "f16c",
                 "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512_vnni": "avx512vnni"}
        features = {name: alias.get(name, name) in words for name in features}
    return model, features


def int8_weights_can_saturate(method: dict) -> bool:
    """Whether a vision graph made with quantizer settings ``method`` (a bundle manifest's
    ``vision[].method``) holds full-range int8 weights multiplied u8 x s8, which saturate
    on a CPU whose :attr:`CpuInfo.int8_saturates`. Graphs written before the scheme was
    recorded (no ``reduce_range`` key) are taken to be full range, as they were."""
    has_u8s8 = (method.get("weight_type") == "int8"
                or bool(method.get("attention_qkv")))  # int4: q/k/v in int8
    return has_u8s8 and not method.get("reduce_range", False)


def vision_graph_warning(graph, cpu: CpuInfo | None = None) -> str | None:
    """A warning for a bundle's vision graph (a :class:`llava_edge.manifest.VisionGraph`) on
    ``cpu`` (default: this one), or None when its arithmetic is exact enough here."""
    cpu = cpu or this_cpu()
    if not (cpu.int8_saturates and int8_weights_can_saturate(graph.method or {})):
        return None
    return (f"vision graph {graph.file} ({graph.precision}) has full-range int8 "
            f"weights, whose u8 x s8 products saturate in ONNX Runtime on this CPU "
            f"({cpu.isa_class}): its embeddings may be far from the exported parity. "
            "Re-export with this llava-edge (7-bit weights, which cannot saturate on any CPU) "
            "or use the fp32 / fp16 graph (--vision-precision).")
