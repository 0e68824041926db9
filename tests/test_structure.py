"""The house rules of the package layout, checked from the source (ast, no imports):

- no import cycle inside fluidml_tvm;
- passes and schedules never import the compiler, the CLI, the runtime or the tooling, and the
  runtime and RPC never import the compiler side (a board runs them with the TVM runtime alone);
- no module over 400 lines, each stage's front door under 250;
- README.md lists every fluidml.* key with its default, from the one table in options.py.
"""

from __future__ import annotations

import ast
import os

from fluidml_tvm.options import markdown_table, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "fluidml_tvm")
FRONT_DOORS = ["passes/layout/stage.py", "passes/memory/stage.py", "schedules/stage.py"]
COMPILER_SIDE = ("compiler", "artifact", "cli", "pipeline", "passes", "schedules", "tools",
                 "kernel_cache",
                 "layout_verify", "frontend")


def _modules() -> dict[str, str]:
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _imports(mods) -> dict[str, set]:
    edges = {}
    for name, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom):
                base = pkg
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                if node.level:
                    base = base + "." + node.module if node.module else base
                else:
                    base = node.module or ""
                cands = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            found |= {c for c in cands if c in mods and c != name}
        # a package's __init__ re-exporting its submodules is not a dependency of theirs on it
        edges[name] = {t for t in found if not name.startswith(t + ".")}
    return edges


def _cycles(edges) -> list[list[str]]:
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_lower_layers_never_import_upper_ones():
    edges = _imports(_modules())
    bad = []
    for m, targets in edges.items():
        part = m.split(".")[1] if "." in m else ""
        for t in targets:
            top = t.split(".")[1]
            if part in ("passes", "schedules") and top in ("compiler", "artifact", "cli",
                                                           "runtime", "rpc", "tools",
                                                           "layout_verify"):
                bad.append(f"{m} -> {t}")
            if part in ("runtime", "rpc") and top in COMPILER_SIDE:
                bad.append(f"{m} -> {t}")
    assert bad == []


def test_module_sizes():
    mods = _modules()
    sizes = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in mods.items()}
    assert {m: n for m, n in sizes.items() if n > 400} == {}
    for door in FRONT_DOORS:
        path = os.path.join(PKG, door)
        assert sum(1 for _ in open(path, encoding="utf-8")) < 250, door


def test_readme_lists_every_key_with_its_default():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [f"{k}={d}" for k, d, _ in table() if f"`{k}={d}`" not in readme]
    assert missing == []
    assert markdown_table() in readme  # the same text: regenerate it from options.py
