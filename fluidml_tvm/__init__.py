"""fluidml-tvm: FluidML's inference optimizations as Apache TVM (Relax) passes.

Public API::

    import fluidml_tvm
    lib = fluidml_tvm.compile("model.onnx", target="x86", input_shapes={"x": [1, 3, 224, 224]})
    lib.export("model.so")
    model = fluidml_tvm.load("model.so")
    outputs = model.run({"x": array})
"""

from .errors import FluidMLError
from .options import Options

__version__ = "0.1.0"


def compile(model, target="x86", input_shapes=None, options=None, **kwargs):
    """Compile an ONNX model (path or ``ModelProto``); see :func:`fluidml_tvm.compiler.compile`.

    Raises :class:`FluidMLError` in a process that loaded a model with the TVM runtime alone
    (:func:`load`'s default).
    """
    from .runtime.backend import compile_blocker

    blocked = compile_blocker()  # before importing the compiler side, which needs all of TVM
    if blocked:
        raise FluidMLError(blocked)
    from .compiler import compile as _compile

    return _compile(model, target=target, input_shapes=input_shapes, options=options, **kwargs)


def load(path, device=None, num_threads=None, memory_cfg=None, runtime_only=None):
    """Load a library from ``compile(...).export(path)``; see :func:`fluidml_tvm.runtime.load`.

    In a process that has not imported TVM, this maps the TVM runtime alone (no compiler; the
    process cannot compile afterwards) unless ``runtime_only=False`` or
    ``FLUIDML_TVM_RUNTIME_ONLY=0``.
    """
    from .runtime import load as _load

    return _load(path, device=device, num_threads=num_threads, memory_cfg=memory_cfg,
                 runtime_only=runtime_only)


__all__ = ["FluidMLError", "Options", "compile", "load", "__version__"]
