"""Reading an analysed run's series and summary the way the arguments need them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from icl_lab.measure.phase import Window, window_overlap
from icl_lab.report.verdict import induction_heads
from icl_lab.run.rundir import Run

LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), font=dict(size=12))


def color(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def series(run: Run) -> pd.DataFrame:
    """Per checkpoint after step 0: tokens, loss, icl_score and the best head's prefix-matching
    and previous-token scores."""
    t = run.metrics()
    t = t[t.tokens > 0]
    scalars = t[t.metric.isin(["loss", "icl_score"])].pivot_table(index="tokens", columns="metric", values="value")
    heads = t[t.metric.isin(["prefix_matching", "previous_token"])]
    best = heads.pivot_table(index="tokens", columns="metric", values="value", aggfunc="max")
    return scalars.join(best).reset_index()


def phase(run: Run) -> dict:
    return run.summary()["phase_change"]


def overlap_of_shorter(run: Run) -> float:
    """How much of the shorter of the ICL-score and prefix-matching windows the other covers, on a
    log-token axis (1: one lies inside the other; NaN when either window is missing). The phase
    record's own `window_overlap` (`icl_lab.measure.phase.window_overlap`), which `detected` reads."""
    pc = phase(run)
    if pc.get("window_overlap") is not None:
        return float(pc["window_overlap"])
    a, b = pc.get("icl_window"), pc.get("prefix_matching_window")
    if a is None or b is None:
        return math.nan
    return window_overlap(Window(**a), Window(**b))


def bump_cover(run: Run) -> float:
    """The share of the phase window the loss bump covers (NaN without a phase change or a bump)."""
    pc = phase(run)
    bump = pc["loss_bump"]
    return bump["covers"] if pc["detected"] and bump and bump["covers"] is not None else math.nan


def phase_time(run: Run) -> float:
    """When the ICL score changes: the log-midpoint of its 10-90% window, in tokens (NaN if none)."""
    window = phase(run)["icl_window"]
    if not phase(run)["detected"] or window is None:
        return math.nan
    return float(np.sqrt(window["start_tokens"] * window["end_tokens"]))


def best(run: Run, metric: str, layers: range | None = None) -> tuple[float, tuple[int, int] | None]:
    """The highest final-checkpoint `metric` over heads (optionally in `layers`) and its head."""
    heads = [h for h in run.summary()["heads"] if layers is None or h["layer"] in layers]
    if not heads:
        return math.nan, None
    top = max(heads, key=lambda h: h[metric])
    return top[metric], (top["layer"], top["head"])


def inductive(run: Run) -> list[tuple[int, int]]:
    """The run's induction heads: the analysis summary's list (`icl_lab.measure.induction`)."""
    return induction_heads(run.summary())[0]


def shade(fig: go.Figure, run: Run, i: int, **where) -> None:
    pc = phase(run)
    if pc["detected"]:
        fig.add_vrect(x0=pc["start_tokens"], x1=pc["end_tokens"], fillcolor=color(i), opacity=0.12, line_width=0, **where)
