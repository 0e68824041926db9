#!/usr/bin/env bash
# The one install command of fluidml-tvm (README "Install"; CI runs exactly this, then the tests).
#
#   scripts/install.sh              # system packages, the package with [test,plot,cuda], aarch64 runtime
#   scripts/install.sh --no-system  # skip apt-get (no root): only pip and the aarch64 runtime
#   EXTRAS=test,plot scripts/install.sh   # other extras (default: test,plot,cuda)
#
# 1. apt-get update, then the cross toolchain and qemu (aarch64 builds and running them here),
#    g++ (the fluidml.* PassContext keys are a few lines of C++ built at first use), as root or
#    through sudo;
# 2. pip install -e ".[EXTRAS]" with this machine's python3 (the cuda extra brings nvcc from PyPI,
#    so CUDA libraries build without a CUDA toolkit or a GPU);
# 3. scripts/install-aarch64-runtime.sh: the aarch64 TVM runtime and runner for qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[install] $*"; }

system=1
for arg in "$@"; do
    case "$arg" in
        --no-system) system=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
EXTRAS="${EXTRAS:-test,plot,cuda}"
PYTHON="${PYTHON:-python3}"

if [ "$system" = 1 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install.sh: not root and no sudo: run as root, or" \
            "install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user" \
            "file g++ yourself and pass --no-system" >&2; exit 2; }
        SUDO="sudo"
    fi
    say "apt-get update; apt-get install the aarch64 cross toolchain, qemu-user, g++"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user file g++
fi
say "pip install -e .[$EXTRAS]"
"$PYTHON" -m pip install -q -e ".[$EXTRAS]"
say "aarch64 runtime for qemu"
PYTHON="$PYTHON" scripts/install-aarch64-runtime.sh
say "done: run the tests with  python3 -m pytest -q tests"
