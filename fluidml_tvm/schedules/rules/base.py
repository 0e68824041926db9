"""The one interface of a schedule rule, and what a rule is told about the kernel it schedules.

The stage (:mod:`fluidml_tvm.schedules.stage`) asks each rule of
:data:`fluidml_tvm.schedules.rules.RULES`, in order, about one PrimFunc; the first that applies
wins:

1. ``analyze(func, ctx) -> (match, reason)``: does the rule apply? ``match`` is whatever the
   rule needs later; when it is None, ``reason`` says why not (shown in the reason of the rule
   that did apply: "not matmul: ..."). An :class:`Unrelated` reason is left out of that list.
2. ``candidates(match, ctx) -> [config dict]``: the kernels it can generate, its best guess
   first; when there are none, ``no_candidates(match, ctx)`` says why.
3. ``apply(func, match, config, ctx) -> (PrimFunc, reason, pack)``: the scheduled kernel, what
   was done, and ``pack``: ``{param index: (roles, nr)}`` when a constant parameter now takes a
   packed layout (the stage packs the callers' constants, :mod:`..constants`), else None.

A measuring rule (``measures``) has its config picked by :func:`..choose.choose`, cached under
``(name, workload(match, candidates, ctx))`` with ``flops(match)`` for the rates; ``build``
gives a candidate's kernel for timing. The others take their single candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...options import Options
from ..target_info import CPUInfo


@dataclass
class Context:
    """What a rule is told about the kernel it schedules."""

    kernel: str  # the PrimFunc's name in the module
    target: object  # the llvm tvm.target.Target
    cpu: CPUInfo
    options: Options
    const_args: dict = field(default_factory=dict)  # param index -> constant at every call
    db: object = None  # fluidml_tvm.costdb.CostDB, or None (cost=analytic, no cache)
    measure_ok: bool = False  # candidates may be timed on this host

    def is_const(self, param: int | None) -> bool:
        """Whether parameter ``param`` is a constant at every call site."""
        return param is not None and bool(self.const_args.get(param, False))


class Unrelated(str):
    """A reason a rule does not apply that tells a reader nothing: the kernel is not of the
    rule's kind at all (no blocked convolution, no max-pool). Left out of the reasons of the
    rule that applies; still a ``str`` wherever it is shown."""


class Rule:
    """A schedule rule (see the module docstring). Subclasses set ``name`` and implement
    ``analyze`` and ``apply``; a measuring one also ``candidates``, ``workload`` and ``flops``."""

    name = ""
    measures = True  # candidates are chosen by choose.choose (cache, timing); else the first
    generic = False  # a fallback rule: its reason also says why the better rules did not apply
    optional = False  # can be switched off by fluidml.schedule_off (Options.rule_on)

    def analyze(self, func, ctx: Context):
        raise NotImplementedError

    def candidates(self, match, ctx: Context) -> list[dict]:
        return [{}]

    def no_candidates(self, match, ctx: Context) -> str:
        return "no candidate"

    def apply(self, func, match, config: dict, ctx: Context):
        raise NotImplementedError

    def build(self, func, match, config: dict, ctx: Context):
        """The kernel of one candidate, for timing (a failure leaves the candidate out)."""
        return self.apply(func, match, config, ctx)[0]

    def workload(self, match, candidates: list[dict], ctx: Context) -> str:
        """The rule's part of the cache key: the shape facts its candidates depend on."""
        return ""

    def flops(self, match) -> float:
        return 0.0

    def config_of(self, config: dict) -> dict:
        """``config`` as the decision records it (the rule's normal form of a cached one)."""
        return config
