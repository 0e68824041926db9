#!/usr/bin/env bash
# Install what fluidml-tvm needs to cross-compile for aarch64 (Raspberry Pi 4, Jetson) and to RUN
# the result on an x86-64 machine under qemu-user. Idempotent: a second run only checks.
#
#   scripts/install-aarch64-runtime.sh            # installs into ~/.cache/fluidml-tvm/aarch64
#   FLUIDML_TVM_AARCH64_HOME=/some/dir scripts/install-aarch64-runtime.sh
#
# What it does (Debian 12 / Ubuntu 22.04+):
#   1. apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
#      (only what is missing;
#      needs root or sudo). The cross gcc links the model library, the cross g++ builds the runner,
#      and /usr/aarch64-linux-gnu is the aarch64 sysroot qemu-aarch64 runs programs against.
#   2. Downloads the aarch64 wheels of the SAME apache-tvm / apache-tvm-ffi versions as the host's
#      (pip download, no install) and extracts only the runtime: libtvm_runtime.so, libtvm_ffi.so
#      and the tvm-ffi C++ headers. The ~240 MB compiler library is not extracted.
#   3. Builds scripts/vm_runner.cc with aarch64-linux-gnu-g++ into $HOME_DIR/bin/vm_runner: a
#      ~100-line C++ program that loads an exported library with the TVM runtime and runs the
#      Relax VM's "main" (no aarch64 Python, no numpy needed); and scripts/board_server.cc into
#      $HOME_DIR/bin/board_server: a TVM RPC server on the runtime alone (the tests' emulated
#      board farm; it serves on a real aarch64 board as well).
#
# fluidml_tvm.cross.run_under_qemu() then runs (the runner finds $HOME_DIR/lib by its rpath):
#   qemu-aarch64 -L /usr/aarch64-linux-gnu $HOME_DIR/bin/vm_runner LIB.so --input ... --output-dir D
set -euo pipefail

HOME_DIR="${FLUIDML_TVM_AARCH64_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/fluidml-tvm/aarch64}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
say() { echo "[install-aarch64-runtime] $*"; }

# ---- 1. toolchain and qemu ------------------------------------------------------------------------
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# The aarch64 C library (headers, crt files, ld-linux-aarch64.so.1) is only a Recommends of the
# cross gcc: name it, for --no-install-recommends.
[ -e /usr/aarch64-linux-gnu/lib/libc.so ] || need+=(libc6-dev-arm64-cross)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    say "apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# ---- 2. the aarch64 TVM runtime ---------------------------------------------------------------------
versions="$($PYTHON -c 'import importlib.metadata as m
print(m.version("apache-tvm"), m.version("apache-tvm-ffi"))' 2>/dev/null)" || {
    say "error: apache-tvm and apache-tvm-ffi must be installed for $PYTHON first (pip install -e .)"
    exit 1
}
TVM_VERSION="${versions% *}"
FFI_VERSION="${versions#* }"
STAMP="$HOME_DIR/.runtime-$TVM_VERSION-$FFI_VERSION"
mkdir -p "$HOME_DIR/wheels" "$HOME_DIR/lib" "$HOME_DIR/include" "$HOME_DIR/bin"
if [ ! -f "$STAMP" ]; then
    say "downloading aarch64 wheels apache-tvm==$TVM_VERSION apache-tvm-ffi==$FFI_VERSION"
    # The tvm-ffi wheel is per CPython version (its Cython module); libtvm_ffi.so inside is not.
    $PYTHON -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version 3.11 \
        "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION" -d "$HOME_DIR/wheels"
    tvm_whl="$(ls "$HOME_DIR"/wheels/apache_tvm-"$TVM_VERSION"-*aarch64*.whl | head -1)"
    ffi_whl="$(ls "$HOME_DIR"/wheels/apache_tvm_ffi-"$FFI_VERSION"-*aarch64*.whl | head -1)"
    $PYTHON - "$tvm_whl" "$ffi_whl" "$HOME_DIR" <<'EOF'
import os, shutil, sys, zipfile
tvm_whl, ffi_whl, home = sys.argv[1:]
def extract(whl, wanted, dest_of):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if wanted(name) and not name.endswith("/"):
                dest = dest_of(name)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with z.open(name) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
extract(tvm_whl, lambda n: n in ("tvm/lib/libtvm_runtime.so",),
        lambda n: os.path.join(home, "lib", os.path.basename(n)))
extract(ffi_whl, lambda n: n == "tvm_ffi/lib/libtvm_ffi.so",
        lambda n: os.path.join(home, "lib", os.path.basename(n)))
for prefix in ("tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/"):
    extract(ffi_whl, lambda n, p=prefix: n.startswith(p) and n.endswith(".h"),
            lambda n, p=prefix: os.path.join(home, "include", n[len(p):]))
EOF
    rm -f "$HOME_DIR"/.runtime-* "$HOME_DIR"/wheels/*.whl  # ~95 MB no longer needed
    touch "$STAMP"
fi

# ---- 3. the runner ------------------------------------------------------------------------------------
RUNNER="$HOME_DIR/bin/vm_runner"
if [ ! -x "$RUNNER" ] || [ "$HERE/vm_runner.cc" -nt "$RUNNER" ] || [ "$STAMP" -nt "$RUNNER" ]; then
    say "building $RUNNER"
    aarch64-linux-gnu-g++ -std=c++17 -O2 -o "$RUNNER.tmp" "$HERE/vm_runner.cc" \
        -I"$HOME_DIR/include" -L"$HOME_DIR/lib" \
        -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,--as-needed -Wl,-rpath,'$ORIGIN/../lib'
    mv "$RUNNER.tmp" "$RUNNER"
fi

BOARD="$HOME_DIR/bin/board_server"
if [ ! -x "$BOARD" ] || [ "$HERE/board_server.cc" -nt "$BOARD" ] || [ "$STAMP" -nt "$BOARD" ]; then
    say "building $BOARD"
    aarch64-linux-gnu-g++ -std=c++17 -O2 -o "$BOARD.tmp" "$HERE/board_server.cc" \
        -I"$HOME_DIR/include" -L"$HOME_DIR/lib" \
        -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,--as-needed -Wl,-rpath,'$ORIGIN/../lib'
    mv "$BOARD.tmp" "$BOARD"
fi

# ---- check --------------------------------------------------------------------------------------------
probe="$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$RUNNER" 2>&1 || true)"
case "$probe" in
    *"usage: vm_runner"*) ;;
    *) say "error: $RUNNER does not start under qemu-aarch64: $probe"; exit 1 ;;
esac
probe="$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$BOARD" --bogus 2>&1 || true)"
case "$probe" in
    *"usage: board_server"*) ;;
    *) say "error: $BOARD does not start under qemu-aarch64: $probe"; exit 1 ;;
esac
say "ready: $RUNNER and $BOARD (runtime apache-tvm $TVM_VERSION, apache-tvm-ffi $FFI_VERSION)"
