#!/usr/bin/env bash
# Build (once) and print the path of a llama-cpp-python wheel compiled with the
# CMAKE_ARGS of scripts/llama_cmake_args.sh.
#
# pip's own wheel cache ignores CMAKE_ARGS, so a wheel built with other flags
# (e.g. -march=native) would silently be reused. We keep our own cache keyed by
# the version and a hash of the flags instead: the 6-minute compile happens once
# per machine and flag set, and changing flags always rebuilds.
#
# SOURCE (optional) builds from a local sdist instead of PyPI's, offline: no index, no build
# isolation, so scikit-build-core, cmake and ninja must already be installed (what
# scripts/gpu_check.sh does on a machine with no network).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage="usage: build_llama_wheel.sh PYTHON VERSION [SOURCE]"
python="${1:?$usage}"
version="${2:?$usage}"
source="${3:-}"
pip_source=("llama-cpp-python==$version")
[ -n "$source" ] && pip_source=(--no-index --no-build-isolation "$source")
cmake_args="$("$here/llama_cmake_args.sh")"
key="$(printf '%s|%s|%s' "$version" "$cmake_args" "$("$python" -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-16)"
cache="${LLAVA_EDGE_WHEEL_CACHE:-$HOME/.cache/llava-edge/wheels}/llama-cpp-python-$key"
wheel="$(ls "$cache"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $version with CMAKE_ARGS='$cmake_args' (several minutes, once)" >&2
  mkdir -p "$(dirname "$cache")"
  tmp="$(mktemp -d "${cache}.tmp.XXXX")"
  trap 'rm -rf "$tmp"' EXIT
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip wheel --no-cache-dir --no-deps -w "$tmp" "${pip_source[@]}" >&2
  mkdir -p "$cache"
  mv "$tmp"/llama_cpp_python-*.whl "$cache"/
  wheel="$(ls "$cache"/llama_cpp_python-*.whl | head -n1)"
fi
echo "$wheel"
