#!/usr/bin/env bash
# The GPU check in one command, with no network:
#
#   scripts/gpu_check.sh [--wheels DIR] [--work DIR] [--out FILE]   on a machine with an NVIDIA
#                                                                   GPU, nvcc and CUDA torch
#   scripts/gpu_check.sh --cpu-only [--work DIR] [--out FILE]       anywhere llava-edge is
#                                                                   installed (what CI runs)
#   scripts/gpu_check.sh --plan ...                                 say what it would do, do nothing
#
# On the GPU machine it
#   1. makes a venv that sees the machine's own packages (its CUDA build of torch,
#      transformers, ONNX, pip, CMake, ninja, scikit-build-core stay as they are): a .pth file
#      naming $PYTHON's site-packages, because --system-site-packages would reach only the base
#      interpreter's when $PYTHON is itself a venv, as on many GPU images; --without-pip, so
#      that no older bundled pip or setuptools shadows the machine's;
#   2. builds llama-cpp-python with CUDA for the GPU it finds (scripts/llama_cmake_args.sh:
#      -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES from nvidia-smi) from the trimmed sdist in
#      the wheels folder, offline; the wheel is cached like `make setup`'s;
#   3. installs llava-edge (editable) and the wheels' gguf / diskcache, offline;
#   4. runs `python -m llava_edge.benchmarks.gpu_check`: a bf16 stage-2 step with gradient
#      checkpointing on tinyllava-1.1b, exports of tiny and tinyllava-1.1b, answers with full
#      offload and none, bench rows; one JSON (default: WORK/gpu_check.json).
# The wheels folder comes from scripts/gpu_wheelhouse.sh DIR, run where PyPI is reachable
# (default DIR: .gpu-wheels in the repository, which git ignores).
#
# --cpu-only skips 1-3 and runs step 4 on the tiny preset in fp32 with the Python that has
# llava-edge installed ($PYTHON, else .venv/bin/python, else python3).
# Exit status: 0 when every step passed, 1 when one failed (the JSON says which), 2 when the
# machine lacks what the check needs (the message says what).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode=gpu plan=0 wheels="$root/.gpu-wheels" work="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) mode=cpu ;;
    --plan) plan=1 ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift ;;
    --work) work="${2:?--work needs a folder}"; shift ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
work="${work:-$root/gpu_check_out}"
out="${out:-$work/gpu_check.json}"
say() { echo "gpu_check.sh: $*" >&2; }
missing() { say "$*"; exit 2; }
run() {  # print a step; run it unless --plan
  say "+ $*"
  [ "$plan" = 1 ] || "$@"
}

if [ "$mode" = cpu ]; then
  python="${PYTHON:-}"
  [ -z "$python" ] && [ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
  python="${python:-python3}"
  "$python" -c "import llava_edge, llama_cpp" 2>/dev/null \
    || missing "$python cannot import llava_edge and llama_cpp: run 'make setup' (or set PYTHON)"
  run mkdir -p "$work"
  run "$python" -m llava_edge.benchmarks.gpu_check "$out" --cpu-only --work "$work"
  exit 0
fi

# -- what the GPU check needs from the machine ------------------------------------------------
python="${PYTHON:-python3}"
cmake_args="$("$root/scripts/llama_cmake_args.sh")"  # says on stderr which build and why
case " $cmake_args " in
  *" -DGGML_CUDA=on "*) ;;
  *) missing "no CUDA build of llama.cpp is possible here (see the line above); --cpu-only checks the rest" ;;
esac
sdist="$(ls "$wheels"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1 || true)"
[ -n "$sdist" ] || missing "no llama_cpp_python-*.tar.gz in $wheels: fill it with scripts/gpu_wheelhouse.sh $wheels where PyPI is reachable"
version="$(basename "$sdist" .tar.gz)"
version="${version#llama_cpp_python-}"
if [ "$plan" = 0 ]; then
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    || missing "$python has no torch that sees a CUDA GPU: the check trains on the GPU"
  for tool in cmake ninja; do
    "$python" -c "import $tool" 2>/dev/null || command -v "$tool" >/dev/null \
      || missing "$tool is needed to build llama.cpp offline"
  done
  "$python" -c "import scikit_build_core" 2>/dev/null \
    || missing "scikit-build-core is needed to build llama-cpp-python offline ($python -m pip install scikit-build-core where PyPI is reachable)"
fi
say "llama-cpp-python $version from $sdist, CMAKE_ARGS='$cmake_args'"

# -- 1-3: venv, llama.cpp with CUDA, llava-edge ------------------------------------------------
venv="$work/venv"
vpy="$venv/bin/python"
offline=(--no-index --find-links "$wheels" --no-build-isolation)
run mkdir -p "$work"
if [ ! -x "$vpy" ]; then
  run "$python" -m venv --without-pip "$venv"
  if [ "$plan" = 0 ]; then
    "$vpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$work/.purelib"
    "$python" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
      > "$(cat "$work/.purelib")/machine-packages.pth"
  fi
fi
t0=$SECONDS
cached=1
wheel="(built by build_llama_wheel.sh)"
log="$work/llama-build.log"
if [ "$plan" = 0 ]; then
  say "building llama.cpp (a few minutes; log: $log)"
  if ! wheel="$(CMAKE_ARGS="$cmake_args" "$root/scripts/build_llama_wheel.sh" "$vpy" "$version" "$sdist" 2> "$log")"; then
    tail -n 40 "$log" >&2
    say "the llama.cpp build failed (whole log: $log)"
    exit 1
  fi
  grep -q "^building llama-cpp-python" "$log" && cached=0
else
  say "+ CMAKE_ARGS='$cmake_args' scripts/build_llama_wheel.sh $vpy $version $sdist"
fi
build_s=$((SECONDS - t0))
run "$vpy" -m pip install --quiet --no-deps --force-reinstall "$wheel"
run "$vpy" -m pip install --quiet "${offline[@]}" -e "$root[train,export,bench]"
setup="$work/setup.json"
if [ "$plan" = 0 ]; then
  "$vpy" - "$setup" "$cmake_args" "$version" "$wheel" "$build_s" "$cached" <<'EOF'
import json, sys
path, cmake_args, version, wheel, seconds, cached = sys.argv[1:]
json.dump({"llama_cpp_python": version, "cmake_args": cmake_args, "wheel": wheel,
           "build_seconds": int(seconds), "wheel_from_cache": cached == "1"},
          open(path, "w"), indent=1)
EOF
fi

# -- 4: the check ---------------------------------------------------------------------------
run "$vpy" -m llava_edge.benchmarks.gpu_check "$out" --work "$work" --setup "$setup"
