#!/usr/bin/env bash
# Install PyTorch into the given Python environment, the right build for this machine.
#
# With an NVIDIA GPU (nvidia-smi works): the default PyPI build (CUDA).
# Without one: the CPU build. An unpinned or plain `pip install torch` on a CPU machine
# pulls a multi-GB CUDA build, so we ask for the "+cpu" local version: first from the
# indexes pip is already configured with (a local wheelhouse, a mirror), then from the
# PyTorch CPU index.
set -euo pipefail
python="${1:?usage: install_torch.sh PYTHON VERSION}"
version="${2:?usage: install_torch.sh PYTHON VERSION}"

if "$python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$version' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: installing torch==$version (CUDA build from PyPI)" >&2
  "$python" -m pip install "torch==$version"
  exit 0
fi
echo "no GPU: installing the CPU build torch==$version+cpu" >&2
"$python" -m pip install "torch==$version+cpu" 2>/dev/null \
  || "$python" -m pip install "torch==$version+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
