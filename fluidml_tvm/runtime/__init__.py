"""Load and run a library written by ``fluidml_tvm.compile(...).export(path)``.

Everything a board needs and nothing more: this package imports only numpy and the TVM runtime
(``libtvm_runtime.so`` through ``tvm_ffi``, see :mod:`.backend`), never the compiler.

============  ====================================================================================
module        what it holds
============  ====================================================================================
``model``     :class:`Model` (``run``, ``time``), :func:`load`, :func:`set_num_threads`
``backend``   the runtime a model runs on: ``tvm_ffi`` + ``libtvm_runtime.so`` alone, or TVM's
              classes when ``tvm`` is imported; why a process that loaded cannot compile
``metadata``  the ``NAME.json`` beside a library: :func:`metadata_path`, :func:`read_metadata`
``weights``   the external weights file ``NAME.weights``: written at export, mapped at load
``profile``   per-kernel timings (``fluidml-tvm run --profile``)
============  ====================================================================================

Examples
--------
>>> from fluidml_tvm.runtime import load
>>> model = load("bert.so", num_threads=4)
>>> outputs = model.run(model.random_inputs())
"""

from .metadata import metadata_path, read_metadata
from .model import Model, load, set_num_threads

__all__ = ["Model", "load", "metadata_path", "read_metadata", "set_num_threads"]
