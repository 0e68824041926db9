"""Tutorial: a compile whose schedule and layout choices are measured on a farm of boards.

Run it:  python tutorials/board_farm_compile.py

Compiling for a Raspberry Pi 4 on an x86 workstation, fluidml-tvm cannot time its candidate
kernels here, so it takes analytic choices. With boards registered at a TVM RPC tracker, every
candidate is cross-compiled here, uploaded and timed ON the boards, all free boards in parallel,
and the timings are kept in the cost database under the boards' identity (key, machine, CPU,
threads): the next compile for the same boards measures nothing.

Everything below runs on this machine, on 127.0.0.1 only: the "boards" are two
``board_server`` processes (a TVM RPC server on the aarch64 TVM runtime alone, no Python) under
qemu-aarch64, installed by ``scripts/install-aarch64-runtime.sh``. Emulated timings say nothing
about a real Pi; the steps are the ones you run with real boards:

1. start an RPC tracker and two emulated boards registered under the key ``rasp4b-sim``;
2. compile a small MLP for ``rasp4b`` with the farm measuring (``measure_remote.boards``), and
   see where each candidate was timed;
3. compile again: every choice comes from the cost database, nothing is measured;
4. run the library on a board through the tracker, and under qemu, against ONNX Runtime;
5. stop every process it started.

With real boards
----------------
On the workstation:

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190

On each Raspberry Pi, one of (all need only the TVM runtime):

    board_server --host 0.0.0.0 --tracker WORKSTATION_IP:9190 --key rasp4b   # C++, no Python
    fluidml-tvm rpc-server --host 0.0.0.0 --tracker WORKSTATION_IP:9190 --key rasp4b
    python -m tvm.exec.rpc_server --host 0.0.0.0 --tracker WORKSTATION_IP:9190 --key rasp4b

(``board_server`` is ``scripts/board_server.cc``, built on the Pi with
``g++ -std=c++17 -O2 board_server.cc -ltvm_runtime -ltvm_ffi`` against the runtime of the
aarch64 apache-tvm wheel; the first two report the board's CPU, which keys the timings; with the
stock server they are kept under the key alone.) Then, on the workstation:

    fluidml-tvm compile model.onnx --target rasp4b --rpc-tracker 127.0.0.1:9190 \\
        --rpc-key rasp4b -o model_rasp4b.so --report

A board that dies or hangs mid-compile loses nothing (its candidate is timed on another board),
and with no board reachable the compile keeps the analytic choices; ``--report`` says which.
"""

import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import fluidml_tvm
from fluidml_tvm import cross, measure_remote, rpc

HOST = "127.0.0.1"  # a tutorial never listens beyond this machine
KEY = "rasp4b-sim"
workdir = tempfile.mkdtemp(prefix="fluidml-farm-")
cache = ["fluidml.cache_dir=" + os.path.join(workdir, "cache")]  # a fresh cost database

missing = cross.board_server_missing() or cross.cross_compiler_missing()
if missing:
    print(f"skipped: no emulated board farm here ({missing})")
    sys.exit(0)

# A small MLP: x[64,128] -> Linear(128) -> ReLU -> Linear(64): two kernels worth measuring.
rng = np.random.default_rng(0)
w1, w2 = (rng.standard_normal(s).astype("float32") * 0.1 for s in ((128, 128), (128, 64)))
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
     helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 128])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
    [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
feeds = {"x": rng.standard_normal((64, 128)).astype("float32")}
reference = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]

# 1. The tracker and two emulated boards ------------------------------------------------------
from tvm.rpc.tracker import Tracker  # noqa: E402

tracker = Tracker(host=HOST, port=9190, port_end=9290, silent=True)
tracker_addr = f"{HOST}:{tracker.port}"
boards = []
try:
    for base in (9300, 9400):
        boards.append(cross.start_board_under_qemu(tracker_addr, KEY, HOST, base, base + 90))
    print(f"[1] tracker {tracker_addr}; boards under {KEY!r}: "
          + ", ".join(addr for _, addr in boards))
    with rpc.Tracker(HOST, tracker.port) as trk:  # wait until both have registered
        deadline = time.monotonic() + 30
        while trk.summary().get("queue_info", {}).get(KEY, {}).get("free", 0) < 2:
            assert time.monotonic() < deadline, "the boards did not register"
            time.sleep(0.1)

    # 2. Compile with the farm measuring ---------------------------------------------------------
    with measure_remote.boards(tracker_addr, KEY) as farm:
        compiled = fluidml_tvm.compile(model, target="rasp4b",
                                       pass_config=[*cache, "fluidml.tune_trials=4"])
    farm.attach(compiled)  # the farm's notices join the schedule decisions (--report)
    print(f"[2] boards' identity (keys the cost database): {farm.identity}")
    print(f"[2] candidates timed per board: {dict(farm.timings_by_board)}")
    for d in compiled.decisions["schedule"]:
        print(f"    {d}")

    # 3. Again: the choices come from the cost database ----------------------------------------
    with measure_remote.boards(tracker_addr, KEY) as again:
        compiled = fluidml_tvm.compile(model, target="rasp4b",
                                       pass_config=[*cache, "fluidml.tune_trials=4"])
    print(f"[3] second compile: {sum(again.timings_by_board.values())} candidates timed; "
          + "; ".join(f"{d.subject}: {d.data['measured']} measured"
                      for d in compiled.decisions["schedule"] if d.subject))
    assert not again.timings_by_board

    # 4. Run it on a board (through the tracker) and under qemu --------------------------------
    lib = compiled.export(os.path.join(workdir, "mlp_rasp4b.so"))
    with rpc.connect(tracker=tracker_addr, key=KEY, session_timeout=120) as session:
        remote = rpc.load_remote(lib, session)
        out = remote.run(feeds)["y"]
    print(f"[4] on board {session.server}: max |tvm - onnxruntime| = "
          f"{np.abs(out - reference).max():.2e}")
    assert np.abs(out - reference).max() < 1e-4
    outputs, _ = cross.run_under_qemu(lib, feeds)
    print(f"[4] under qemu-aarch64: max |tvm - onnxruntime| = "
          f"{np.abs(outputs['y'] - reference).max():.2e}")
finally:
    # 5. Stop everything: each board and its session processes, by process id.
    for proc, _ in boards:
        rpc.kill_tree(proc.pid)
    rpc.stop_server(tracker)
print("[5] tracker and boards stopped")
