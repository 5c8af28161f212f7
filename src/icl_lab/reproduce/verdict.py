"""Verdict rows and report sections of the reproduction.

A `Check` compares one measured value with a threshold that is fixed in code (the constants of
each argument's module), written down before any run and never tuned after seeing a result."""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field

import pandas as pd
import plotly.graph_objects as go

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Check:
    """One row of a verdict table.

    Attributes:
        argument: e.g. "argument-3".
        claim: what the row tests, in words.
        metric: what was measured, and on which model.
        value: the measured value (NaN when it could not be measured).
        threshold: the comparison, e.g. ">= 0.8".
        passed: whether `value` meets `threshold`.
    """

    argument: str
    claim: str
    metric: str
    value: float
    threshold: str
    passed: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["value"] = None if math.isnan(self.value) else self.value
        return d


def check(argument: str, claim: str, metric: str, value: float | int, op: str, threshold: float | int) -> Check:
    """A `Check` of `value op threshold`; a NaN value fails."""
    value = float(value)
    passed = not math.isnan(value) and bool(_OPS[op](value, threshold))
    return Check(argument, claim, metric, value, f"{op} {threshold:g}", passed)


@dataclass
class Section:
    """One argument's part of the report.

    Attributes:
        argument: "argument-N".
        title: a short title.
        claim: the paper's claim in one sentence.
        checks: the verdict table.
        figures: id -> plotly figure, drawn in this order.
        table: an extra table shown under the figures (e.g. the family in Argument 6).
        notes: sentences shown under the table (what was measured, and how).
        seconds: wall-clock time the argument took.
    """

    argument: str
    title: str
    claim: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, go.Figure] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)
