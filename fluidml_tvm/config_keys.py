"""Register the ``fluidml.*`` keys with TVM's ``PassContext``.

TVM rejects ``PassContext(config={...})`` keys it does not know, and Python cannot register one: the
registry is the C++ static ``tvm::transform::PassContext::RegisterConfigOption``, exported by
``libtvm_compiler.so``. A few lines of C++, built once with ``tvm_ffi.cpp.load_inline`` (cached
under ``~/.cache/tvm-ffi``), call it. Where no C++ compiler is available the keys are not
registered: pass :class:`fluidml_tvm.Options` (or ``--pass-config``) instead, which always works.

``import tvm`` calls :func:`_autoload` through the ``tvm.backends`` entry point, so after installing
fluidml-tvm ``tvm.transform.PassContext(config={"fluidml.layout": False})`` works in any TVM flow.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fluidml_tvm")

_SOURCE = r"""
#include <functional>
#include <string>
#include <tvm/ffi/any.h>
#include <tvm/ffi/string.h>
// Declaration of the one static member we call; it is exported by libtvm_compiler.so (the wheel
// ships no compiler headers).
namespace tvm { namespace transform {
class PassContext {
 public:
  static void RegisterConfigOption(const char* key, ffi::String value_type_str,
                                   std::function<ffi::Any(ffi::Any)> legalization);
};
}}  // namespace tvm::transform
void register_key(tvm::ffi::String key, tvm::ffi::String type) {
  // The registry keeps the key pointer: give it a string that lives forever.
  const std::string* stable = new std::string(key);
  tvm::transform::PassContext::RegisterConfigOption(stable->c_str(), type,
                                                    [](tvm::ffi::Any v) { return v; });
}
"""

_TYPES = {bool: "Bool", int: "Integer", str: "String"}
_STATE: dict = {}


def register() -> bool:
    """Register every ``fluidml.*`` key; returns whether the keys are available. Idempotent."""
    if "ok" in _STATE:
        return _STATE["ok"]
    import dataclasses

    import tvm

    from .options import Options

    wanted = {}
    for key, f in Options.keys().items():  # includes the alias fluidml.enable
        typ = f.type if isinstance(f.type, type) else {"bool": bool, "int": int, "str": str}[f.type]
        wanted[key] = _TYPES[typ]
    assert all(isinstance(f, dataclasses.Field) for f in Options.keys().values())
    existing = set(tvm.transform.PassContext.list_configs().keys())
    missing = {k: v for k, v in wanted.items() if k not in existing}
    if not missing:
        _STATE["ok"] = True
        return True
    try:
        import tvm_ffi.cpp

        libdir = os.path.join(os.path.dirname(tvm.__file__), "lib")
        mod = tvm_ffi.cpp.load_inline(
            "fluidml_tvm_config_keys",
            cpp_sources=_SOURCE,
            functions=["register_key"],
            extra_ldflags=[f"-L{libdir}", "-ltvm_compiler", f"-Wl,-rpath,{libdir}"],
        )
        for key, typ in missing.items():
            # Registering a key twice aborts the process: list_configs() was checked above.
            mod.register_key(key, typ)
        _STATE["ok"] = True
    except Exception as err:  # no compiler, no headers: fall back to Options
        log.info("fluidml.* PassContext keys not registered (%s); use Options/--pass-config", err)
        _STATE["ok"] = False
    return _STATE["ok"]


def _autoload() -> None:
    """Entry point of the ``tvm.backends`` group (run by ``import tvm``)."""
    if os.environ.get("FLUIDML_TVM_REGISTER_KEYS", "1") == "0":
        return
    import tvm

    if getattr(tvm, "_RUNTIME_ONLY", False):
        return
    register()
