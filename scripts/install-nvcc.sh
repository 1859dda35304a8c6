#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, cicc, ptxas, headers, cudart) from PyPI into a private
# prefix, pinned to the versions the GPU machines' driver (580, CUDA 13.0) can load: a newer nvcc
# emits PTX that driver rejects. Idempotent; prints the CUDA_HOME-like directory on stdout:
#
#   export CUDA_HOME=$(scripts/install-nvcc.sh) PATH=$CUDA_HOME/bin:$PATH
#
# The prefix is $DISTILLERY_CUDA_PREFIX (default /opt/cuda-13.0). It is separate from any
# site-packages, so it does not fight the newer CUDA wheels PyTorch may have installed. The
# wheels' nvidia/cu13 folder already has the CUDA_HOME layout (bin/nvcc with an nvcc.profile
# that finds nvvm/bin/cicc, include/, lib/); this adds the unversioned libcudart.so the linker
# wants.
set -euo pipefail

PREFIX="${DISTILLERY_CUDA_PREFIX:-/opt/cuda-13.0}"
CUDA_HOME_DIR="$PREFIX/site/nvidia/cu13"
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)

have_pinned() {
  [ -x "$CUDA_HOME_DIR/bin/nvcc" ] && [ -x "$CUDA_HOME_DIR/nvvm/bin/cicc" ] &&
    [ -f "$CUDA_HOME_DIR/lib/libcudart.so.13" ] &&
    "$CUDA_HOME_DIR/bin/nvcc" --version 2>/dev/null | grep -q "V13.0.88"
}

if ! have_pinned; then
  PY="${PYTHON:-python3}"
  mkdir -p "$PREFIX"
  echo "installing nvcc 13.0 into $PREFIX/site (${PINS[*]})" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target "$PREFIX/site" "${PINS[@]}" >&2
  have_pinned || { echo "install-nvcc: nvcc 13.0.88 not usable after install" >&2; exit 1; }
fi

ln -sfn libcudart.so.13 "$CUDA_HOME_DIR/lib/libcudart.so"
echo "$CUDA_HOME_DIR"
