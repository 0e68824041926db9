"""Target presets and --target parsing (targets.py): presets, JSON, tags, one-line errors."""

from __future__ import annotations

import pytest
import tvm

from fluidml_tvm import targets
from fluidml_tvm.errors import FluidMLError


def test_presets_resolve_with_their_cross_compiler():
    for name, kind, cross in (("x86", "llvm", None), ("rasp4b", "llvm", "aarch64-linux-gnu-gcc"),
                              ("jetson-orin", "cuda", "aarch64-linux-gnu-gcc"),
                              ("cuda-sm90", "cuda", None)):
        target, cc = targets.resolve(name)
        assert target.kind.name == kind and cc == cross
    assert str(targets.resolve("cuda-sm90")[0].attrs["arch"]) == "sm_90"
    assert targets.resolve("host")[0].kind.name == "llvm"  # an alias of x86


def test_json_dict_tag_and_target_objects():
    t, cc = targets.resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    assert t.kind.name == "llvm" and cc == "aarch64-linux-gnu-gcc"
    t, cc = targets.resolve({"kind": "llvm"})
    assert t.kind.name == "llvm" and cc is None
    given = tvm.target.Target({"kind": "llvm"})
    assert targets.resolve(given)[0] is given
    assert targets.resolve("raspberry-pi/4b-aarch64")[1] == "aarch64-linux-gnu-gcc"


@pytest.mark.parametrize("spec, message", [
    ("pentium", "unknown target 'pentium'; use a preset (x86, rasp4b"),
    ('{"kind": ', "target: invalid JSON"),
    ('{"kind": "nope"}', "invalid target"),
])
def test_bad_targets_are_one_line_errors(spec, message):
    with pytest.raises(FluidMLError) as err:
        targets.resolve(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_describe_lists_every_preset():
    text = targets.describe_all()
    assert all(name in text for name in targets.PRESETS)
