"""The fluidml.* PassContext keys (config_keys.py): registered once, read by compile."""

import tvm
from needs import require
from onnx_models import mlp

import fluidml_tvm
from fluidml_tvm import config_keys
from fluidml_tvm.options import Options


def test_passcontext_keys_registered_and_read():
    require(None if config_keys.register() else "tvm_ffi.cpp.load_inline failed", "a C++ compiler")
    known = tvm.transform.PassContext.list_configs()
    for key in ("fluidml", "fluidml.enable", "fluidml.layout", "fluidml.memory",
                "fluidml.schedule", "fluidml.verify"):
        assert key in known
    with tvm.transform.PassContext(config={"fluidml.layout": False, "fluidml.enable": True}):
        opts = Options.from_context()
    assert opts.enable and not opts.layout
    every = {key for key in Options.keys()}
    assert every <= set(known)  # every switch of the table is a key
    # Registering again is a no-op (a second C++ registration would abort the process).
    assert config_keys.register()


def test_passcontext_keys_drive_compile():
    require(None if config_keys.register() else "tvm_ffi.cpp.load_inline failed", "a C++ compiler")
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86")
    assert compiled.options.enable is False
    # Explicit pass_config overrides the context.
    with tvm.transform.PassContext(config={"fluidml.enable": False}):
        compiled = fluidml_tvm.compile(mlp(), "x86", pass_config=["fluidml=1"])
    assert compiled.options.enable is True
