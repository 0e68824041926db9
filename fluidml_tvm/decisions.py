"""Decisions as data: what every FluidML stage decided, why, and the numbers behind it.

A :class:`Decision` is one choice a stage made about one subject (a kernel, a tensor, a function,
a layout plan): the ``choice`` (a rule, a layout, ``fused``, ``kept``...), the ``reason`` a user
reads in ``--report``, and ``data``: the numbers code reads (a schedule's config and timings, a
plan's id and measured gain). Reports are a view of these records (:func:`render`); code reads
``data``, never report text.

Passes leave their decisions on the module they return, as JSON in the module attribute
``fluidml.decisions.<stage>`` (:func:`attach`), so they travel with the IR through
``tvm.transform.Sequential`` in any TVM flow; :func:`from_module` reads them back (a pass
instrument after the stage sees them, as ``fluidml_tvm.compile`` does).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

ATTR_PREFIX = "fluidml.decisions."


@dataclass
class Decision:
    """One decision of one stage.

    Parameters
    ----------
    stage
        The stage that made it: ``layout``, ``schedule``, ``memory``, ``split_projection``,
        ``residual_order``, ``fuse_conv_pool``, ``layout_verify``, ``winograd``.
    subject
        What it is about: a kernel, a tensor, a function, a plan.
    choice
        What was chosen: a schedule rule, a layout, ``fused``, ``swapped``, ``not applied``...
    reason
        Why, in words (what ``--report`` prints).
    data
        Numbers and settings behind it, JSON-serializable (config, timings, plan id, ratios).
    """

    stage: str
    subject: str
    choice: str
    reason: str = ""
    data: dict = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.subject:
            return self.reason
        return f"{self.subject}: {self.choice}" + (f" - {self.reason}" if self.reason else "")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Decision:
        return cls(obj["stage"], obj["subject"], obj["choice"], obj.get("reason", ""),
                   dict(obj.get("data") or {}))


def note(stage: str, text: str, **data) -> Decision:
    """A decision about the stage as a whole (printed as its reason alone)."""
    return Decision(stage, "", "note", text, data)


def dumps(decisions) -> str:
    return json.dumps([d.to_json() for d in decisions], sort_keys=True, default=str)


def loads(text: str) -> list[Decision]:
    return [Decision.from_json(o) for o in json.loads(text)]


def attach(mod, stage: str, decisions):
    """``mod`` with ``decisions`` in its attribute ``fluidml.decisions.<stage>``."""
    return mod.with_attr(ATTR_PREFIX + stage, dumps(decisions))


def from_module(mod, stage: str) -> list[Decision] | None:
    """The decisions ``stage`` left on ``mod`` (``None``: the stage left none)."""
    attrs = getattr(mod, "attrs", None)
    key = ATTR_PREFIX + stage
    if attrs is None or key not in attrs:
        return None
    return loads(str(attrs[key]))


def render(decisions) -> str:
    """The report text of a list of decisions: one line each."""
    return "\n".join(str(d) for d in decisions)
