"""Per-kernel timings of a loaded model: what ``fluidml-tvm run --profile`` prints.

:func:`kernel_times` times every VM call with ``vm.set_instrument`` (TVM 0.27 has no VM profiler
any more). It runs wherever the VM lives: here for :func:`local_kernel_times`, and on a board,
where ``fluidml-tvm rpc-server`` registers it for :meth:`fluidml_tvm.rpc.RemoteModel.kernel_times`
(a client-side Python callback cannot be passed over RPC).
"""

from __future__ import annotations

import json
import time


def kernel_times(vm_module, func_name: str = "main", number: int = 1) -> str:
    """Time every VM call of ``func_name`` with ``vm.set_instrument``; JSON rows, slowest first.

    ``vm_module`` is the module behind ``relax.VirtualMachine.module`` whose inputs were set with
    ``set_input``. Runs once to warm up, then ``number`` timed runs. The callback's own cost (a few
    microseconds per call) is included in each kernel's time. Kernels on a GPU run
    asynchronously: the device of the call's first GPU tensor is synchronized before and after the
    call (not verified on a GPU yet).
    """
    import tvm_ffi

    totals: dict[str, list] = {}
    stack: list[float] = []

    def sync(args):
        for a in args:
            dev = getattr(a, "device", None)
            if dev is not None and dev.dlpack_device_type() != 1:  # 1: kDLCPU
                dev.sync()
                return

    def instrument(func, name, before_run, ret_value, *args):
        sync(args)
        if before_run:
            stack.append(time.perf_counter())
        else:
            elapsed = time.perf_counter() - stack.pop()
            row = totals.setdefault(str(name), [0, 0.0])
            row[0] += 1
            row[1] += elapsed
        return 0

    vm_module["invoke_stateful"](func_name)
    vm_module["set_instrument"](tvm_ffi.convert(instrument))
    try:
        for _ in range(max(1, int(number))):
            vm_module["invoke_stateful"](func_name)
    finally:
        # None removes the callback; a no-op one would still cost ~8x on later timings.
        vm_module["set_instrument"](None)
    rows = [{"name": n, "calls": c, "total_ms": t * 1e3, "mean_us": t * 1e6 / c}
            for n, (c, t) in totals.items()]
    rows.sort(key=lambda r: -r["total_ms"])
    return json.dumps(rows)


def local_kernel_times(model, inputs, number: int = 1) -> list[dict]:
    """:func:`kernel_times` for a model loaded in this process (``fluidml_tvm.runtime.load``)."""
    arrays = model._arrays(inputs)
    model.vm.set_input("main", *arrays)
    return json.loads(kernel_times(model.vm.module, "main", number))


def format_kernel_table(rows: list[dict], top: int | None = None,
                        metadata: dict | None = None) -> str:
    """The per-kernel table ``fluidml-tvm run --profile`` prints: the ``top`` slowest kernels,
    the rest summed, and the VM's own builtins (allocations, shape checks) on one line. With
    the library's ``metadata`` (its kernels' work and the compile host's peaks), each kernel's
    GFLOP/s, GB/s and share of the roofline, and a warning for every conv/matmul kernel below
    30% of it (:mod:`fluidml_tvm.roofline`)."""
    from ..roofline import fraction, lookup, rates, warning

    total = sum(r["total_ms"] for r in rows) or 1.0
    kernels = [r for r in rows if not r["name"].startswith("vm.builtin.")]
    builtins = [r for r in rows if r["name"].startswith("vm.builtin.")]
    shown = kernels[:top] if top else kernels
    work = (metadata or {}).get("kernels") or {}
    peak = (metadata or {}).get("host_peak")
    head = f"{'kernel':<48} {'calls':>6} {'total (ms)':>11} {'mean (us)':>10} {'share':>6}"
    lines = [head + (f" {'GFLOP/s':>8} {'GB/s':>7} {'roof':>5}" if work else "")]
    warnings = []
    for r in shown:
        line = (f"{r['name'][:48]:<48} {r['calls']:>6d} {r['total_ms']:>11.4f} "
                f"{r['mean_us']:>10.2f} {100 * r['total_ms'] / total:>5.1f}%")
        rec = lookup(work, r["name"])
        if rec is not None:
            seconds = r["mean_us"] * 1e-6
            gflops, gbps = rates(rec, seconds)
            frac = fraction(rec, seconds, peak)
            line += f" {gflops:>8.1f} {gbps:>7.1f} " + (f"{frac:>4.0%}" if frac else f"{'-':>5}")
            w = warning(r["name"], rec, seconds, peak) if peak else None
            if w:
                warnings.append(w)
        lines.append(line)

    def summed(label, group):
        ms = sum(r["total_ms"] for r in group)
        calls = sum(r["calls"] for r in group)
        lines.append(f"{label[:48]:<48} {calls:>6d} {ms:>11.4f} {'':>10} {100 * ms / total:>5.1f}%")

    if len(shown) < len(kernels):
        summed(f"({len(kernels) - len(shown)} more kernels)", kernels[len(shown):])
    if builtins:
        summed(f"(VM builtins: {len(builtins)} kinds)", builtins)
    if work and peak:
        lines.append(f"roof: share of this host's roofline ({peak['gflops']:.1f} GFLOP/s, "
                     f"{peak['gbps']:.1f} GB/s measured at compile time)")
    return "\n".join(lines + warnings)
