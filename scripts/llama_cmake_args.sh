#!/usr/bin/env bash
# Print the CMAKE_ARGS used to build llama-cpp-python on this machine.
#
# Why not GGML_NATIVE=ON (-march=native)? On some VMs the CPU advertises
# instruction sets (e.g. AMX) that the hypervisor does not allow, and a native
# build dies with "Illegal instruction" on quantized (Q8_0) models while F16
# still runs. So we build portable code (GGML_NATIVE=OFF) and switch on exactly
# the x86 extensions the CPU reports in /proc/cpuinfo.
#
# aarch64 (Jetson, Raspberry Pi 5, Graviton, other Arm boards): the same rule. With
# GGML_NATIVE=OFF and no GGML_CPU_ARM_ARCH, llama.cpp compiles for plain armv8-a (NEON
# only), so we pass GGML_CPU_ARM_ARCH=armv8.2-a plus the extensions the CPU reports
# ("Features" in /proc/cpuinfo): asimddp -> +dotprod, asimdhp -> +fp16, i8mm -> +i8mm,
# sve -> +sve. A CPU with none of them (Cortex-A53/A57/A72: Pi 3/4, Jetson Nano) gets the
# armv8-a build.
#
# A CUDA build (-DGGML_CUDA=on) is made by itself where nvcc (on PATH, $CUDACXX or
# /usr/local/cuda/bin) and an NVIDIA GPU (`nvidia-smi -L`, or a Jetson's
# /etc/nv_tegra_release) are both here; LLAVA_EDGE_CUDA=1 forces it, LLAVA_EDGE_CUDA=0
# turns it off. It also sets CMAKE_CUDA_ARCHITECTURES to the GPUs that are here: on a Jetson
# from the device tree (Orin 87, Xavier 72), elsewhere from `nvidia-smi --query-gpu=compute_cap`
# (an H100/H200 9.0 -> 90, an RTX 4090 8.9 -> 89), because llama.cpp's default list of
# architectures takes several times as long to compile (LLAVA_EDGE_CUDA_ARCH=LIST sets it, e.g.
# "86;89" for a wheel that other GPUs will use; with no GPU to ask, llama.cpp's list is built).
# Which build and why goes to stderr.
# An explicit CMAKE_ARGS in the environment wins over everything here.
#
# For tests: LLAVA_EDGE_MACHINE, LLAVA_EDGE_CPUINFO and LLAVA_EDGE_DEVICE_TREE stand in for
# `uname -m`, /proc/cpuinfo and /proc/device-tree/compatible; LLAVA_EDGE_NVCC (a path, or
# "none") and LLAVA_EDGE_NVIDIA_GPU (1 or 0) for the nvcc and GPU probes, LLAVA_EDGE_NVIDIA_CC
# for nvidia-smi's compute capabilities (one per line).
set -euo pipefail

if [ -n "${CMAKE_ARGS:-}" ]; then
  echo "$CMAKE_ARGS"
  exit 0
fi

here="$(cd "$(dirname "$0")" && pwd)"
machine="${LLAVA_EDGE_MACHINE:-$(uname -m)}"
cpuinfo="${LLAVA_EDGE_CPUINFO:-/proc/cpuinfo}"
args="-DGGML_NATIVE=OFF"
if [ "$machine" = "x86_64" ] && [ -r "$cpuinfo" ]; then
  flags=" $(grep -m1 '^flags' "$cpuinfo" | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  has avx && args="$args -DGGML_AVX=ON"
  has avx2 && args="$args -DGGML_AVX2=ON"
  has fma && args="$args -DGGML_FMA=ON"
  has f16c && args="$args -DGGML_F16C=ON"
  has avx512f && args="$args -DGGML_AVX512=ON"
  has avx512_vnni && args="$args -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args="$args -DGGML_AVX512_BF16=ON"
  has avx_vnni && args="$args -DGGML_AVX_VNNI=ON"
  # AMX (Sapphire Rapids and later Xeons): llama.cpp's AMX kernels (Q4_0/Q4_1/Q8_0/Q4_K/
  # Q5_K/Q6_K/IQ4_XS weights, used where weight repacking is on) need AMX-INT8 beside
  # AVX512-VNNI. The flags alone are not trusted: scripts/amx_probe.sh runs a tile multiply
  # compiled as llama.cpp's is, and says which extra C++ flag the compiler needs (GCC 12
  # miscompiles llama.cpp's tile configuration without -fno-dse). LLAVA_EDGE_AMX=0 turns
  # AMX off, =1 turns it on without the probe (and so without -fno-dse: the compiler as is).
  if has amx_tile && has amx_int8 && has avx512_vnni; then
    amx="${LLAVA_EDGE_AMX:-auto}" amx_cxx=""
    if [ "$amx" = "auto" ]; then
      if amx_cxx="$("$here/amx_probe.sh")"; then amx=1; else amx=0; fi
    fi
    if [ "$amx" = "1" ]; then
      args="$args -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON"
      has amx_bf16 && args="$args -DGGML_AMX_BF16=ON"
      [ -n "$amx_cxx" ] && args="$args -DCMAKE_CXX_FLAGS=$amx_cxx"
    fi
  fi
elif [ "$machine" = "aarch64" ] && [ -r "$cpuinfo" ]; then
  features=" $(grep -m1 '^Features' "$cpuinfo" | cut -d: -f2 || true) "
  has() { [[ "$features" == *" $1 "* ]]; }
  arm=""
  has asimddp && arm="$arm+dotprod"
  has asimdhp && arm="$arm+fp16"
  has i8mm && arm="$arm+i8mm"
  has sve && arm="$arm+sve"
  [ -n "$arm" ] && args="$args -DGGML_CPU_ARM_ARCH=armv8.2-a$arm"
fi
cuda="${LLAVA_EDGE_CUDA:-auto}"
if [ "$cuda" = "auto" ]; then
  nvcc="${LLAVA_EDGE_NVCC:-$(command -v nvcc || true)}"
  [ -z "$nvcc" ] && [ -n "${CUDACXX:-}" ] && [ -x "${CUDACXX}" ] && nvcc="$CUDACXX"
  [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
  [ "$nvcc" = "none" ] && nvcc=""
  gpu="${LLAVA_EDGE_NVIDIA_GPU:-}"
  if [ -z "$gpu" ]; then
    gpu=0
    { nvidia-smi -L 2>/dev/null | grep -q '^GPU '; } && gpu=1
    [ -e /etc/nv_tegra_release ] && gpu=1
  fi
  if [ -n "$nvcc" ] && [ "$gpu" = "1" ]; then
    cuda=1
    echo "llama.cpp: a CUDA build (nvcc at $nvcc and an NVIDIA GPU found; LLAVA_EDGE_CUDA=0 for a CPU build)" >&2
  else
    cuda=0
    why="no NVIDIA GPU found"
    [ -z "$nvcc" ] && why="no nvcc found"
    echo "llama.cpp: a CPU build ($why; LLAVA_EDGE_CUDA=1 to force CUDA)" >&2
  fi
fi
if [ "$cuda" = "1" ]; then
  args="$args -DGGML_CUDA=on"
  arch="${LLAVA_EDGE_CUDA_ARCH:-}"
  if [ -z "$arch" ] && [ "$machine" = "aarch64" ]; then
    tree="${LLAVA_EDGE_DEVICE_TREE:-/proc/device-tree/compatible}"
    compatible=""
    [ -r "$tree" ] && compatible=" $(tr '\0' ' ' < "$tree") "
    case "$compatible" in
      *nvidia,tegra234*) arch=87 ;;  # Orin
      *nvidia,tegra194*) arch=72 ;;  # Xavier
    esac
  fi
  if [ -z "$arch" ]; then
    # "9.0" -> "90", one entry per distinct GPU model, in a CMake list
    caps="${LLAVA_EDGE_NVIDIA_CC-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true)}"
    arch="$(printf '%s\n' "$caps" | tr -d ' .' | grep -E '^[0-9]+$' | sort -un | paste -sd';' || true)"
  fi
  [ -n "$arch" ] && args="$args -DCMAKE_CUDA_ARCHITECTURES=$arch"
  [ -n "$arch" ] && echo "llama.cpp: CUDA code for compute capability $arch" >&2
fi
echo "$args"
