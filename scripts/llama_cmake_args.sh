#!/usr/bin/env bash
# Print the CMAKE_ARGS used to build llama-cpp-python on this machine.
#
# Why not GGML_NATIVE=ON (-march=native)? On some VMs the CPU advertises
# instruction sets (e.g. AMX) that the hypervisor does not allow, and a native
# build dies with "Illegal instruction" on quantized (Q8_0) models while F16
# still runs. So we build portable code (GGML_NATIVE=OFF) and switch on exactly
# the x86 extensions the CPU reports in /proc/cpuinfo.
#
# A CUDA build: set LLAVA_EDGE_CUDA=1 (adds -DGGML_CUDA=on).
# An explicit CMAKE_ARGS in the environment wins over everything here.
set -euo pipefail

if [ -n "${CMAKE_ARGS:-}" ]; then
  echo "$CMAKE_ARGS"
  exit 0
fi

args="-DGGML_NATIVE=OFF"
if [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  has avx && args="$args -DGGML_AVX=ON"
  has avx2 && args="$args -DGGML_AVX2=ON"
  has fma && args="$args -DGGML_FMA=ON"
  has f16c && args="$args -DGGML_F16C=ON"
  has avx512f && args="$args -DGGML_AVX512=ON"
  has avx512_vnni && args="$args -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args="$args -DGGML_AVX512_BF16=ON"
  has avx_vnni && args="$args -DGGML_AVX_VNNI=ON"
fi
if [ "${LLAVA_EDGE_CUDA:-0}" = "1" ]; then
  args="$args -DGGML_CUDA=on"
fi
echo "$args"
