"""What `pip install .` ships and what `make setup` pins, checked without building anything.

pyproject.toml lists the packages by hand (setuptools' `find` cannot follow the
package-dir mapping that installs trainer/, export/, runtimes/ and benchmarks/ under
llava_edge), so these tests walk the tree and fail when the list and the folders differ.
tests/test_wheel_install.py builds the wheel, installs it and runs the CLI from it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGES = {"tests", "examples", "scripts", "build", "dist", "demo_out"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setuptools() -> dict:
    return _pyproject()["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Every folder with an __init__.py under a package-dir root, by its installed name."""
    found = {}
    for name, folder in _setuptools()["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            found[".".join((name, *rel.parts))] = init.parent
    return found


def _name(requirement: str) -> str:
    """The normalized project name of a requirement string (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not name==version: {line!r}"
        assert re.fullmatch(r"[0-9][A-Za-z0-9.!]*", version), f"not an exact public version: {line!r}"
        assert _name(name) not in pins, f"pinned twice: {name}"
        pins[_name(name)] = version
    return pins


def _makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    listed = set(_setuptools()["packages"])
    found = set(_package_folders())
    assert not found - listed, (
        f"folders with an __init__.py that pyproject.toml does not list (they would be left "
        f"out of the wheel): {sorted(found - listed)}")
    assert not listed - found, f"listed packages with no folder: {sorted(listed - found)}"


def test_every_module_lies_in_a_package():
    """A .py file in a folder without __init__.py is not a package module and would not ship."""
    for name, folder in _setuptools()["package-dir"].items():
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            assert (py.parent / "__init__.py").is_file(), (
                f"{py.relative_to(ROOT)} is in a folder without __init__.py: it would not be "
                "installed")


def test_no_top_level_package_is_left_out_of_the_mapping():
    mapped = {Path(folder).parts[0] for folder in _setuptools()["package-dir"].values()}
    for entry in sorted(ROOT.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").is_file():
            assert entry.name in mapped | NOT_PACKAGES, (
                f"{entry.name}/ is a package but not in [tool.setuptools] package-dir")


def test_the_console_script_targets_a_listed_package():
    target = _pyproject()["project"]["scripts"]["llava-edge"]
    module = target.split(":")[0]
    assert module in _setuptools()["packages"], f"llava-edge -> {target}: {module} is not shipped"


def test_package_data_globs_are_relative_to_listed_packages():
    data = _setuptools().get("package-data", {})
    for package in data:
        assert package in _setuptools()["packages"], package


def test_the_lock_pins_every_dependency_exactly():
    pins = _lock()
    project = _pyproject()["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extra in ("gpu", "tensorrt", "all"):  # not part of the tested set-up
            continue
        wanted |= {_name(r) for r in requirements}
    assert not wanted - set(pins), f"not in constraints.txt: {sorted(wanted - set(pins))}"
    assert "llava-edge" not in pins, "the lock must not pin the project itself"


def test_the_lock_agrees_with_the_makefile():
    pins = _lock()
    assert pins["llama-cpp-python"] == _makefile_variable("LLAMA_CPP_VERSION")
    assert pins["torch"] == _makefile_variable("TORCH_VERSION")  # no "+cpu": matches any build


def test_make_setup_installs_with_the_lock_and_reinstalls_when_it_changes():
    text = (ROOT / "Makefile").read_text()
    assert _makefile_variable("CONSTRAINTS") == "constraints.txt"
    assert re.search(r"^\$\(VENV\)/\.installed:[^\n]*\$\(CONSTRAINTS\)", text, re.M)
    assert re.search(r'pip install --quiet -e "\.\[all\]" \$\(PIP_C\)', text)
    assert re.search(r'pip install --quiet "llama-cpp-python==\$\(LLAMA_CPP_VERSION\)" \$\(PIP_C\)',
                     text)
    assert re.search(r"^lock:", text, re.M)


# --- scripts/llama_cmake_args.sh: CMake flags from the CPU (the wheel cache is keyed on them)

ORIN = ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
        "asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\n")
GRAVITON3 = ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
             "asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat "
             "ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\n")
PI4 = "Features\t: fp asimd evtstrm crc32 cpuid\n"
AVX512 = ("flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq "
          "avx512_vnni avx512_bf16\n")
AVX2 = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2\n"
AMX = AVX512.rstrip("\n") + " amx_bf16 amx_tile amx_int8\n"  # a Sapphire Rapids Xeon
AVX512_FLAGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON")


def _cmake_args(tmp_path, machine, cpuinfo, compatible=None, **env):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + cpuinfo)
    tree = tmp_path / "compatible"
    tree.unlink(missing_ok=True)
    if compatible is not None:
        tree.write_bytes(compatible)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CMAKE_ARGS", "LLAVA_EDGE_CUDA", "LLAVA_EDGE_AMX")}
    environ.update(LLAVA_EDGE_MACHINE=machine, LLAVA_EDGE_CPUINFO=str(info),
                   LLAVA_EDGE_DEVICE_TREE=str(tree), LLAVA_EDGE_NVIDIA_GPU="0",
                   LLAVA_EDGE_NVIDIA_CC="", LLAVA_EDGE_AMX_PROBE="0")
    environ.update(env)
    return subprocess.run([str(ROOT / "scripts" / "llama_cmake_args.sh")], env=environ,
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


@pytest.mark.parametrize("cpuinfo, expected", [
    (AVX2, "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"),
    (AVX512, AVX512_FLAGS),
], ids=["avx2", "avx512"])
def test_cmake_args_on_x86(tmp_path, cpuinfo, expected):
    assert _cmake_args(tmp_path, "x86_64", cpuinfo) == expected


AMX_FLAGS = " -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON"


@pytest.mark.parametrize("cpuinfo, env, expected", [
    (AMX, {"LLAVA_EDGE_AMX_PROBE": "1"}, AVX512_FLAGS + AMX_FLAGS),
    # GCC 12 drops llama.cpp's tile configuration unless told -fno-dse
    (AMX, {"LLAVA_EDGE_AMX_PROBE": "fno-dse"},
     AVX512_FLAGS + AMX_FLAGS + " -DCMAKE_CXX_FLAGS=-fno-dse"),
    # the CPU reports AMX but a tile multiply did not run: no AMX code
    (AMX, {"LLAVA_EDGE_AMX_PROBE": "0"}, AVX512_FLAGS),
    (AMX, {"LLAVA_EDGE_AMX_PROBE": "1", "LLAVA_EDGE_AMX": "0"}, AVX512_FLAGS),
    (AMX, {"LLAVA_EDGE_AMX_PROBE": "0", "LLAVA_EDGE_AMX": "1"}, AVX512_FLAGS + AMX_FLAGS),
    # llama.cpp's AMX kernels are compiled only with AVX512-VNNI beside AMX-INT8
    (AMX.replace(" avx512_vnni", ""), {"LLAVA_EDGE_AMX_PROBE": "1"},
     AVX512_FLAGS.replace(" -DGGML_AVX512_VNNI=ON", "")),
], ids=["probe-ran", "probe-needs-fno-dse", "probe-failed", "turned-off", "forced", "no-vnni"])
def test_amx_only_where_a_tile_multiply_ran(tmp_path, cpuinfo, env, expected):
    assert _cmake_args(tmp_path, "x86_64", cpuinfo, **env) == expected


def test_the_amx_probe_on_this_machine():
    # The real probe: AMX on only where the CPU reports it (a CPU without it dies on the
    # first tile instruction, the failure the probe exists for); what it prints on stdout
    # is the extra compiler flag the build then gets.
    env = {k: v for k, v in os.environ.items() if k != "LLAVA_EDGE_AMX_PROBE"}
    r = subprocess.run([str(ROOT / "scripts" / "amx_probe.sh")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    said = r.stderr.strip().splitlines()[-1]
    assert said.startswith("llama.cpp: AMX on" if r.returncode == 0 else "llama.cpp: AMX off")
    assert r.stdout.strip() in ("", "-fno-dse") and (r.returncode == 0 or not r.stdout.strip())
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    if not {"amx_tile", "amx_int8"} <= flags:
        assert r.returncode == 1, said


@pytest.mark.parametrize("cpuinfo, expected", [
    (ORIN, "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"),
    (GRAVITON3, "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16+i8mm+sve"),
    (PI4, "-DGGML_NATIVE=OFF"),
], ids=["jetson-orin", "graviton3", "pi4"])
def test_cmake_args_on_aarch64(tmp_path, cpuinfo, expected):
    assert _cmake_args(tmp_path, "aarch64", cpuinfo) == expected


def test_cmake_args_for_cuda_on_a_jetson_orin(tmp_path):
    compatible = b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0"
    assert _cmake_args(tmp_path, "aarch64", ORIN, compatible, LLAVA_EDGE_CUDA="1") == (
        "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DGGML_CUDA=on "
        "-DCMAKE_CUDA_ARCHITECTURES=87")
    # not a Jetson (no device tree) and no GPU to ask: llama.cpp's own list of architectures
    assert _cmake_args(tmp_path, "aarch64", PI4, LLAVA_EDGE_CUDA="1") == (
        "-DGGML_NATIVE=OFF -DGGML_CUDA=on")


@pytest.mark.parametrize("caps, expected", [
    ("9.0\n", "90"),  # an H100 / H200
    ("8.6\n8.9\n8.6\n", "86;89"),  # three cards, two models: each model once
    ("", None),  # nvidia-smi had nothing to say: llama.cpp's own list
], ids=["h200", "mixed", "unknown"])
def test_cuda_architectures_from_the_gpus_here(tmp_path, caps, expected):
    """A desktop CUDA build compiles for the GPUs nvidia-smi reports (the default list takes
    several times as long); LLAVA_EDGE_CUDA_ARCH overrides it."""
    args = _cmake_args(tmp_path, "x86_64", AVX2, LLAVA_EDGE_CUDA="1", LLAVA_EDGE_NVIDIA_CC=caps)
    arch = re.search(r"-DCMAKE_CUDA_ARCHITECTURES=(\S+)", args)
    assert (arch and arch.group(1)) == expected
    assert args.startswith("-DGGML_NATIVE=OFF -DGGML_AVX=ON") and "-DGGML_CUDA=on" in args
    assert _cmake_args(tmp_path, "x86_64", AVX2, LLAVA_EDGE_CUDA="1", LLAVA_EDGE_NVIDIA_CC=caps,
                       LLAVA_EDGE_CUDA_ARCH="75;86").endswith("-DCMAKE_CUDA_ARCHITECTURES=75;86")


@pytest.mark.parametrize("nvcc, gpu, cuda, says", [
    ("/opt/cuda/bin/nvcc", "1", "", "a CUDA build (nvcc at /opt/cuda/bin/nvcc and an NVIDIA GPU"),
    ("/opt/cuda/bin/nvcc", "0", "", "a CPU build (no NVIDIA GPU found"),
    ("none", "1", "", "a CPU build (no nvcc found"),
    ("/opt/cuda/bin/nvcc", "1", "0", None),  # opted out
    ("none", "0", "1", None),  # forced
], ids=["nvcc-and-gpu", "no-gpu", "no-nvcc", "opt-out", "forced"])
def test_cuda_build_where_nvcc_and_a_gpu_are_here(tmp_path, nvcc, gpu, cuda, says):
    env = dict(LLAVA_EDGE_NVCC=nvcc, LLAVA_EDGE_NVIDIA_GPU=gpu)
    if cuda:
        env["LLAVA_EDGE_CUDA"] = cuda
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + AVX2)
    environ = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "LLAVA_EDGE_CUDA")}
    environ.update(LLAVA_EDGE_MACHINE="x86_64", LLAVA_EDGE_CPUINFO=str(info), **env)
    out = subprocess.run([str(ROOT / "scripts" / "llama_cmake_args.sh")], env=environ,
                         capture_output=True, text=True, check=True, timeout=30)
    wants_cuda = cuda == "1" or (cuda == "" and says and "CUDA build" in says)
    assert ("-DGGML_CUDA=on" in out.stdout) == bool(wants_cuda)
    if says:
        assert says in out.stderr


def test_explicit_cmake_args_win(tmp_path):
    assert _cmake_args(tmp_path, "aarch64", ORIN, CMAKE_ARGS="-DGGML_NATIVE=ON") == (
        "-DGGML_NATIVE=ON")
