"""Compiled kernels kept between compiles (kernel_cache.py): a second compile of the same model
links the first one's objects and builds nothing, the library computes what ONNX Runtime does,
a changed kernel is built again, and ``fluidml.kernel_cache=0`` builds as tvm.compile does."""

from __future__ import annotations

import os

import numpy as np
from onnx_models import assert_matches_ort, mlp

import fluidml_tvm
from fluidml_tvm import kernel_cache

ANALYTIC = "fluidml.cost=analytic"  # no measuring: the test is about code generation


def _objects(cache):
    folder = os.path.join(cache, kernel_cache.OBJECTS)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _run(c, x):
    return c.load().run({"x": x})


def test_second_compile_builds_nothing(tmp_path):
    cache = str(tmp_path)
    cfg = [ANALYTIC, f"fluidml.cache_dir={cache}"]
    first = fluidml_tvm.compile(mlp(), pass_config=cfg)
    k1 = first.tuning["kernel_cache"]
    assert k1["found"] == 0 and k1["built"] > 0, k1
    objs = _objects(cache)
    assert len(objs) == k1["built"] and all(o.endswith(".o") for o in objs), objs

    second = fluidml_tvm.compile(mlp(), pass_config=cfg)
    assert second.tuning["kernel_cache"] == {"found": k1["built"], "built": 0}
    assert _objects(cache) == objs  # nothing rewritten, nothing added

    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    out1, out2 = _run(first, x), _run(second, x)
    assert_matches_ort(mlp(), out2, {"x": x})
    for a, b in zip(out1.values(), out2.values()):
        np.testing.assert_array_equal(a, b)

    path = tmp_path / "m.so"
    second.export(str(path))  # the linked objects export as one library, like any other
    assert path.exists() and path.stat().st_size > 0


def test_a_changed_kernel_is_built_again(tmp_path):
    cache = str(tmp_path)
    cfg = [ANALYTIC, f"fluidml.cache_dir={cache}"]
    fluidml_tvm.compile(mlp(sizes=(32, 64, 16)), pass_config=cfg)
    before = set(_objects(cache))
    other = fluidml_tvm.compile(mlp(sizes=(32, 48, 16)), pass_config=cfg)
    k = other.tuning["kernel_cache"]
    assert k["built"] > 0, k  # the 48-wide layers are new kernels
    assert len(set(_objects(cache)) - before) == k["built"]
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    assert_matches_ort(mlp(sizes=(32, 48, 16)), _run(other, x), {"x": x})


def test_off_builds_one_module_and_keeps_nothing(tmp_path):
    cache = str(tmp_path)
    c = fluidml_tvm.compile(mlp(), pass_config=[ANALYTIC, f"fluidml.cache_dir={cache}",
                                                "fluidml.kernel_cache=0"])
    assert _objects(cache) == []
    assert c.tuning["kernel_cache"] == {"found": 0, "built": 0}
    x = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
    assert_matches_ort(mlp(), _run(c, x), {"x": x})


def test_stock_tvm_keeps_nothing(tmp_path):
    cache = str(tmp_path)
    fluidml_tvm.compile(mlp(), pass_config=["fluidml=0", f"fluidml.cache_dir={cache}"])
    assert _objects(cache) == []


def test_key_covers_kernel_target_and_build_config():
    import tvm
    from tvm import te

    def func(n):
        a = te.placeholder((n,), name="a")
        return te.create_prim_func([a, te.compute((n,), lambda i: a[i] * 2.0, name="b")])

    x86 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    avx = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    base = kernel_cache.identity(x86, {})
    assert kernel_cache.identity(avx, {}) != base
    assert kernel_cache.identity(x86, {"tirx.disable_vectorize": True}) != base
    # fluidml's own options shape the IR (keyed already), not its lowering: no effect
    assert kernel_cache.identity(x86, {"fluidml.tune_budget": 10}) == base
    key = kernel_cache.kernel_key
    keys = {key("f", func(8), base), key("f", func(9), base), key("g", func(8), base),
            key("f", func(8), kernel_cache.identity(avx, {}))}
    assert len(keys) == 4
    assert key("f", func(8), base) == key("f", func(8), base)


def test_a_read_only_cache_still_compiles(tmp_path, monkeypatch):
    """A cache whose objects folder cannot be written (os.access says so; the tests run as
    root, whom mode bits do not stop): everything is built, into a temporary folder, nothing
    kept, and the library is right."""
    cache = str(tmp_path)
    real = os.access
    monkeypatch.setattr(kernel_cache.os, "access", lambda p, mode: (
        False if p.startswith(cache) and mode == os.W_OK else real(p, mode)))
    c = fluidml_tvm.compile(mlp(), pass_config=[ANALYTIC, f"fluidml.cache_dir={cache}"])
    assert c.tuning["kernel_cache"]["built"] > 0
    assert _objects(cache) == []
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    assert_matches_ort(mlp(), _run(c, x), {"x": x})


def test_prune_deletes_the_least_recently_used(tmp_path):
    """Over the limit, the oldest objects go first, down to 3/4 of it; under it nothing goes."""
    for i in range(8):
        p = tmp_path / f"{i}.o"
        p.write_bytes(b"x" * 100)
        os.utime(p, ns=(i * 10**9, i * 10**9))  # 0.o is the least recently used
    assert kernel_cache.prune(str(tmp_path), max_bytes=800) == 0
    assert kernel_cache.prune(str(tmp_path), max_bytes=700) == 3  # 800 -> 500 <= 525
    assert sorted(os.listdir(tmp_path)) == [f"{i}.o" for i in range(3, 8)]


def test_a_cache_that_cannot_take_an_object_still_compiles(tmp_path, monkeypatch):
    """Writing an object into the cache fails (a full disk: os.replace raises): the compile
    builds everything again into a temporary folder and succeeds, nothing kept."""
    cache = str(tmp_path)
    real = os.replace

    def full(src, dst):
        if str(dst).startswith(cache):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(kernel_cache.os, "replace", full)
    c = fluidml_tvm.compile(mlp(), pass_config=[ANALYTIC, f"fluidml.cache_dir={cache}"])
    assert c.tuning["kernel_cache"]["built"] > 0 and c.tuning["kernel_cache"]["found"] == 0
    assert [o for o in _objects(cache) if not o.startswith(".part-")] == []
    x = np.random.default_rng(4).standard_normal((4, 32)).astype(np.float32)
    assert_matches_ort(mlp(), _run(c, x), {"x": x})
