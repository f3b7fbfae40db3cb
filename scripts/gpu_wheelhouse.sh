#!/usr/bin/env bash
# Fill DIR with what scripts/gpu_check.sh needs on a GPU machine with no network, where
# PyTorch (CUDA), transformers, ONNX, ONNX Runtime, CMake, ninja and scikit-build-core are
# already installed (an NVIDIA image of the usual kind):
#
#   llama_cpp_python-VERSION.tar.gz   llama-cpp-python's sdist, trimmed to what its build reads
#   gguf-*.whl, diskcache-*.whl       the two pure-Python packages such images lack
#
#   scripts/gpu_wheelhouse.sh DIR      (run where PyPI is reachable; versions from the lock)
#
# Why trim: the sdist is ~77 MB, mostly llama.cpp's git history, test vocabularies
# (models/*.gguf), docs and the web UI, none of which a wheel build reads; trimmed it is
# ~9 MB, so the folder travels in well under 60 MB.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:?usage: gpu_wheelhouse.sh DIR}"
python="${PYTHON:-python3}"
pin() {  # the version the lock pins NAME to
  grep -i -m1 -E "^$1==" "$root/constraints.txt" | cut -d= -f3
}
llama="$(pin llama-cpp-python)"
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "gpu_wheelhouse: llama-cpp-python $llama (sdist)" >&2
"$python" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$llama"
tar xzf "$tmp/llama_cpp_python-$llama.tar.gz" -C "$tmp"
src="$tmp/llama_cpp_python-$llama"
# What the build does not read: llama.cpp's tests, docs, benches, demos, web UI and
# vocabularies (llama-cpp-python builds llama.cpp as a subproject: no tests, tools, server
# or examples but tools/mtmd, which it adds itself), and llama-cpp-python's own examples.
rm -rf "$src/.git" "$src/examples" "$src/docker" \
  "$src/vendor/llama.cpp/"{models,docs,benches,media,tests,pocs,app,tools/ui,.devops,.github}
for keep in CMakeLists.txt vendor/llama.cpp/CMakeLists.txt vendor/llama.cpp/tools/mtmd/CMakeLists.txt \
            vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt; do
  [ -f "$src/$keep" ] || { echo "gpu_wheelhouse: the trimmed sdist lost $keep" >&2; exit 1; }
done
tar czf "$dir/llama_cpp_python-$llama.tar.gz" -C "$tmp" "llama_cpp_python-$llama"

for name in gguf diskcache; do
  echo "gpu_wheelhouse: $name $(pin "$name")" >&2
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$name==$(pin "$name")"
done
size_mb="$(du -sm "$dir" | cut -f1)"
echo "gpu_wheelhouse: $dir holds ${size_mb} MB" >&2
ls -1 "$dir"
