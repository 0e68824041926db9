"""Tutorial: cross-compile for a Raspberry Pi 4 / Jetson Orin, and benchmark over TVM RPC.

Run it:  python tutorials/cross_compile_rpc.py

Everything here runs on one x86-64 machine, on 127.0.0.1 only:

1. cross-compile tiny BERT for the ``rasp4b`` preset (aarch64 Cortex-A72, NEON, 4 cores) and,
   when ``scripts/install-aarch64-runtime.sh`` has been run, execute the aarch64 library under
   qemu-user and compare it with ONNX Runtime;
2. start an RPC tracker and a ``fluidml-tvm rpc-server`` registered with it (standing in for the
   board), compile tiny BERT for this machine, then upload, run and time it *through the tracker*,
   with per-kernel timings measured on the "board", exactly as you would with a real one;
3. stop every process it started.

With a real Raspberry Pi 4 (64-bit Raspberry Pi OS)
---------------------------------------------------
On the workstation (x86-64, Debian/Ubuntu):

    apt-get install gcc-aarch64-linux-gnu            # the cross linker
    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    fluidml-tvm compile model.onnx --target rasp4b -o model_rasp4b.so

On the Pi (only the TVM runtime is needed: ``pip install apache-tvm==0.27.0.post1
apache-tvm-ffi==0.1.14.post0 numpy cloudpickle psutil tornado``; the aarch64 wheel exists):

    python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090 \\
        --tracker WORKSTATION_IP:9190 --key rasp4b
    # or, with fluidml-tvm installed on the Pi, the same plus per-kernel timings (it too runs
    # with the TVM runtime alone when TVM_USE_RUNTIME_LIB=1):
    TVM_USE_RUNTIME_LIB=1 fluidml-tvm rpc-server --host 0.0.0.0 \
        --tracker WORKSTATION_IP:9190 --key rasp4b

Back on the workstation:

    python -m tvm.exec.query_rpc_tracker --host 127.0.0.1 --port 9190   # the Pi is listed
    fluidml-tvm run model_rasp4b.so --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b \\
        --print-time --repeat 20 --profile 10

Several Pis registered under the same key form a farm: every ``run`` (or meta-schedule's
``RPCRunner``) gets whichever board is free, and ``fluidml_tvm.rpc.benchmark_many(libraries,
"127.0.0.1:9190", "rasp4b")`` times many model variants on all of them at once. Without a
tracker, ``--rpc-server PI_IP:9090`` talks to one Pi directly. Set ``TVM_NUM_THREADS=4`` on the Pi
(``fluidml-tvm rpc-server`` uses all cores by default; TVM itself uses half).

With a Jetson Orin (JetPack 6, aarch64 + CUDA sm_87)
----------------------------------------------------
    fluidml-tvm compile model.onnx --target jetson-orin -o model_orin.so

builds the host code for aarch64 and the kernels as an sm_87 fatbin, on a workstation without a
GPU (needs nvcc, e.g. ``pip install nvidia-cuda-nvcc``). The Jetson runs the same RPC server with
its own key (``--key orin``) and ``fluidml-tvm run model_orin.so --rpc-tracker ... --rpc-key orin``
runs it on the Jetson's GPU. A TVM runtime built with CUDA is needed on the Jetson for that (the
PyPI aarch64 wheel ships ``libtvm_runtime_cuda.so``; it needs the JetPack driver, libcuda.so.1).
"""

import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

import fluidml_tvm
from fluidml_tvm import cross, rpc
from fluidml_tvm.runtime.profile import format_kernel_table
from fluidml_tvm.tools import zoo

HOST = "127.0.0.1"  # a tutorial never listens beyond this machine
workdir = tempfile.mkdtemp(prefix="fluidml-cross-rpc-")
model = zoo.build("bert", size="tiny", seed=0)
inputs = zoo.random_inputs(model, seed=0)
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def max_diff(outputs):
    return max(float(np.abs(outputs[k] - reference[k]).max()) for k in reference)


# 1. Cross-compile for the Raspberry Pi 4 ---------------------------------------------------------
missing = cross.cross_compiler_missing()
if missing:
    print(f"[1] skipped the rasp4b build: {missing}")
else:
    # The rasp4b preset carries its cross linker (aarch64-linux-gnu-gcc); --cross-compiler
    # overrides it (e.g. a Yocto or Buildroot toolchain's gcc).
    lib_pi = fluidml_tvm.compile(model, target="rasp4b").export(
        os.path.join(workdir, "bert_rasp4b.so"))
    print(f"[1] wrote {lib_pi}: an {cross.elf_machine(lib_pi)} shared object "
          f"({os.path.getsize(lib_pi) / 1024:.0f} KiB, weights included)")
    why = cross.qemu_missing()
    if why:
        print(f"[1] not running it under qemu: {why}")
    else:
        # Emulated: proves the aarch64 code computes the right thing, says nothing about speed.
        outputs, _ = cross.run_under_qemu(lib_pi, inputs)
        print(f"[1] under qemu-aarch64: max |tvm - onnxruntime| = {max_diff(outputs):.2e}")
        assert max_diff(outputs) < 1e-4

# 2. Benchmark over RPC through a tracker --------------------------------------------------------
from tvm.rpc.tracker import Tracker  # noqa: E402

lib_host = fluidml_tvm.compile(model, target="x86").export(os.path.join(workdir, "bert_x86.so"))
tracker = Tracker(host=HOST, port=9190, port_end=9290, silent=True)
tracker_addr = f"{HOST}:{tracker.port}"
# The "board": what `fluidml-tvm rpc-server --tracker ... --key local-cpu` starts.
board = rpc.start_server(host=HOST, port=9300, port_end=9400, tracker=tracker_addr,
                         key="local-cpu", num_threads=2)
try:
    with rpc.Tracker(HOST, tracker.port) as trk:  # wait until the board has registered
        deadline = time.monotonic() + 30
        while not trk.servers("local-cpu") and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"[2] tracker on {tracker_addr}, board registered with key 'local-cpu'")

    with rpc.connect(tracker=tracker_addr, key="local-cpu", session_timeout=120) as sess:
        remote = rpc.load_remote(lib_host, sess)  # upload + load on the board
        outputs = remote.run(inputs)
        print(f"[2] remote run: max |tvm - onnxruntime| = {max_diff(outputs):.2e}")
        assert max_diff(outputs) < 1e-4
        # time_evaluator runs ON the board: network latency is not in these numbers.
        ms = np.array(remote.time(inputs, repeat=10, number=5)) * 1e3
        print(f"[2] remote latency ({remote.num_threads} threads on the board): "
              f"median {np.median(ms):.3f} ms, min {ms.min():.3f} ms over 10 x 5 runs")
        rows = remote.kernel_times(inputs, number=5)
        print("[2] slowest kernels on the board (5 runs):")
        print(format_kernel_table(rows, top=5))
finally:
    # 3. Stop everything (the server leaves popen_worker children; stop_server ends them by PID).
    rpc.stop_server(board)
    rpc.stop_server(tracker)
print("[3] tracker and server stopped")
sys.exit(0)
