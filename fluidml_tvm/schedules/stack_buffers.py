"""Small per-iteration buffers of a parallel loop on the worker's stack (``fluidml.stack_buffers``).

A schedule that computes a stage once per row of a parallel loop (``compute_at``) gives it a
buffer the size of one row: a conv's padded input row, a softmax's row of ``exp``, a depthwise
kernel's padded plane. TVM's lowering (``LowerTVMBuiltin``) keeps a CPU buffer on the stack only
under 1 KB; a larger one becomes a ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace``
pair that runs on every iteration of the parallel loop (9000 times a call for whisper-tiny's
6 x 1500 x 1500 softmax, once per output row for a conv). :func:`mark` annotates every such
buffer of 1 KB to :data:`MAX_BYTES` under a parallel loop (at most :data:`MAX_BYTES` in all per
loop) with ``disable_lower_builtin``, which ``LowerTVMBuiltin`` honours: the buffer stays an
``alloca`` that LLVM places in the entry block of the loop's closure, once per task. Timed alone
(2-core AVX-512 host, 2 threads): MobileNetV3-Small's 1x1 convs 11.6 -> 8.6 us and 15.1 -> 13.2
us, whisper-tiny's softmax ~5.3 -> ~5.0 ms.

It runs as the last pass of the TIR lowering: :data:`PIPELINE` is TVM's ``s_tir`` pipeline and
then :func:`mark`, registered with ``tvm.tirx.register_tir_pipeline``. :func:`pipeline_name` says
which pipeline a build uses: this one for FluidML's CPU (LLVM) builds while
``fluidml.stack_buffers`` is on (:func:`use`, set by each compile), TVM's ``default`` for
everything else - ``fluidml=0`` builds as stock TVM does. Worker threads of TVM's pool run with
the C++ default stack (8 MB on Linux), so 64 KB a task leaves ample room.
"""

from __future__ import annotations

import contextlib
import contextvars

PIPELINE = "fluidml_stack_buffers"
#: the most bytes of buffers a parallel loop's closure keeps on the stack
MAX_BYTES = 64 << 10
#: TVM keeps smaller CPU buffers on the stack already (runtime::kMaxStackAlloca)
TVM_STACK_BYTES = 1024
_ON = contextvars.ContextVar("fluidml_stack_buffers", default=True)


@contextlib.contextmanager
def use(enabled: bool):
    """Builds within this block (on this thread) use :data:`PIPELINE` only if ``enabled``."""
    token = _ON.set(bool(enabled))
    try:
        yield
    finally:
        _ON.reset(token)


def pipeline_name(target, enabled: bool | None = None) -> str:
    """The TIR pipeline a build for ``target`` uses: :data:`PIPELINE` for an LLVM target while
    on (``enabled``, else :func:`use`'s setting), else ``default``."""
    on = _ON.get() if enabled is None else enabled
    kind = getattr(getattr(target, "kind", None), "name", None)
    if not on or kind != "llvm":
        return "default"
    register()
    return PIPELINE


def _nbytes(buf) -> int | None:
    from tvm import tirx

    n = 1
    for d in buf.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        n *= int(d)
    return n * buf.dtype.bits * buf.dtype.lanes // 8


def mark(func):
    """``func`` with its buffers of 1 KB to :data:`MAX_BYTES` allocated under a parallel loop
    annotated to stay on the stack (at most :data:`MAX_BYTES` a loop, the first ones first)."""
    import tvm_ffi
    from tvm import tirx

    def on_loop(loop):
        if loop.kind != tirx.ForKind.PARALLEL:
            return loop
        used = [0]

        def on_alloc(alloc):
            buf = alloc.buffer
            n = _nbytes(buf)
            if (n is None or n < TVM_STACK_BYTES or used[0] + n > MAX_BYTES
                    or str(buf.scope()) != "global"):
                return alloc
            used[0] += n
            ann = dict(alloc.annotations)
            ann["disable_lower_builtin"] = tirx.IntImm("bool", 1)
            return tirx.AllocBuffer(buf, ann)

        return tvm_ffi.structural_map(loop, [(tirx.AllocBuffer, on_alloc)])

    return tvm_ffi.structural_map(func, [(tirx.For, on_loop)])


def _pass():
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="FluidMLStackBuffers")
    def stack_buffers(mod, _ctx):
        out = {gv: mark(f) if isinstance(f, tirx.PrimFunc) else f
               for gv, f in mod.functions_items()}
        return tvm.IRModule(out, attrs=mod.attrs)

    return stack_buffers


def _factory():
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline

    base, host, device = s_tir_pipeline.default_s_tir_pipeline()
    return tvm.transform.Sequential([base, _pass()], name=PIPELINE), host, device


def register() -> None:
    """Register :data:`PIPELINE` with TVM (once)."""
    from tvm.tirx import compilation_pipeline

    if PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(PIPELINE, _factory)
