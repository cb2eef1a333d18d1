#!/usr/bin/env bash
# Installs everything cfamc needs on Debian 12 (bookworm): the Debian packages, and LibTorch from the pinned
# PyTorch wheel (CUDA-enabled) in a virtual environment outside the clone, beside the Python packages the tests
# use (torchvision, safetensors, tensorboard). Idempotent; a few seconds when everything is already there. The
# LibTorch it provides is linked at $HOME/.cache/cfamc/libtorch, which is what CMakePresets.json's "default"
# preset puts on CMAKE_PREFIX_PATH. CFAMC_DEPS_DIR moves the venv.
set -euo pipefail

TORCH_VERSION=2.11.0        # pinned; README.md records it
TORCHVISION_VERSION=0.26.0  # the torchvision release built for TORCH_VERSION (it requires torch==2.11.0)
deps_dir=${CFAMC_DEPS_DIR:-$HOME/.cache/cfamc}
venv=$deps_dir/torch-$TORCH_VERSION

packages=(build-essential cmake ninja-build ccache binutils python3 python3-venv
          libboost-dev libtomlplusplus-dev libspdlog-dev catch2 libcli11-dev nlohmann-json3-dev
          libdlpack-dev zlib1g-dev libgloo-dev dataset-fashion-mnist)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing PyTorch $TORCH_VERSION (for its LibTorch) into $venv"
  rm -rf "$venv"
  mkdir -p "$deps_dir"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# Python packages the tests use. Checked through their metadata: importing torchvision would load torch (slow).
# The constraint keeps pip from replacing or re-downloading the pinned torch while it resolves their deps.
test_packages_present="import importlib.metadata as m, sys
m.version('safetensors'), m.version('tensorboard')  # raises where missing
sys.exit(m.version('torchvision') != '$TORCHVISION_VERSION')"
if ! "$venv/bin/python" -c "$test_packages_present" 2>/dev/null; then
  echo "setup: installing torchvision $TORCHVISION_VERSION, safetensors, tensorboard into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -c <(echo "torch==$TORCH_VERSION") \
    "torchvision==$TORCHVISION_VERSION" safetensors tensorboard
fi
# The wheel's LibTorch is a CUDA build: its CMake configuration needs the CUDA toolkit (nvcc) to be found,
# even on a machine without a GPU. The CUDA code then compiles and links here and runs where there is a GPU.
if ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: error: no CUDA toolkit (nvcc) found; LibTorch $TORCH_VERSION's CMake config needs CUDA 13.x" >&2
  exit 1
fi
torch_dir=$("$venv/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))" 2>/dev/null)
mkdir -p "$HOME/.cache/cfamc"
ln -sfn "$torch_dir" "$HOME/.cache/cfamc/libtorch"
echo "setup: ok (LibTorch $TORCH_VERSION at $HOME/.cache/cfamc/libtorch)"
