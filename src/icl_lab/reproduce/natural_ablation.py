"""Argument 3 on natural text (issue #26): every head of a text model ablated (zero; full and
pattern-preserving) at a log-spaced subset of its checkpoints that always includes both edges of
its phase window, scored by the share of the *window* ICL score removed (`icl_windows`: the mean
loss over the context's last 10% minus over its 8-12%, per example; docs/decisions.md, 28), with
95% bootstrap intervals over the evaluation windows. Thresholds are fixed here, before the fresh
seeds were trained."""

from __future__ import annotations

import math
import time

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from icl_lab.intervene.ablate import ablate_heads, all_heads
from icl_lab.intervene.attribution import removed_fraction
from icl_lab.measure.intervals import mean_interval, removed_fraction_interval
from icl_lab.measure.losses import icl_windows
from icl_lab.pipeline.evalstore import load_eval_set
from icl_lab.reproduce.readout import LAYOUT, color, inductive, phase
from icl_lab.reproduce.verdict import Check, check
from icl_lab.run.rundir import Run

# fixed before the fresh natural seeds (3, 4, 5) were trained
ABLATION_CHECKPOINTS = 16  # log-spaced, plus the phase window's two edges and the last
ABLATION_EXAMPLES = 256  # evaluation windows (the 10-minute budget for 3 seeds and the control; decision 28)
INDUCTION_RISE = 0.3  # the induction head's pattern-preserving share must grow this much across the phase window
CONTROL_MAX = 0.5  # no head of the one-layer control removes this much
FORMS = {"pattern_preserving": True, "full": False}


def ablation_steps(run: Run, n: int = ABLATION_CHECKPOINTS) -> list[int]:
    """`n` checkpoints spread on a log axis (after step 0), the last, and the checkpoints nearest
    the phase window's start and end when a phase change was detected."""
    steps = [s for s in run.checkpoints if s > 0]
    picks = {steps[int(i)] for i in np.unique(np.round(np.geomspace(1, len(steps), n)).astype(int) - 1)} | {steps[-1]}
    pc = phase(run)
    if pc["detected"]:
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        for edge in (pc["start_tokens"], pc["end_tokens"]):
            picks.add(min(steps, key=lambda s: abs(s * per_step - edge)))
    return sorted(picks)


@torch.inference_mode()
def head_shares(run: Run, steps: list[int], n_examples: int = ABLATION_EXAMPLES) -> dict:
    """{form: {step: [(layer, head, share, lo, hi), ...]}} on the run's stored evaluation windows."""
    tokens = load_eval_set(run).tokens[:n_examples]
    early, late = icl_windows(tokens.shape[1])
    rows = [t - 1 for t in early + late]
    out: dict = {form: {} for form in FORMS}
    for step in steps:
        model = run.model(step)
        heads = all_heads(model)
        for form, preserve in FORMS.items():
            losses = ablate_heads(model, tokens, heads=heads, kind="zero", pattern_preserving=preserve, positions=rows).double()
            icl = losses[:, :, len(early):].mean(-1) - losses[:, :, : len(early)].mean(-1)  # [1 + head, example]
            lo, hi = removed_fraction_interval(icl[0], icl[1:].T)
            out[form][step] = [(l, h, removed_fraction(float(icl[0].mean()), float(icl[i + 1].mean())), float(lo[i]), float(hi[i]))
                               for i, (l, h) in enumerate(heads)]
            out.setdefault("clean", {})[step] = [float(x) for x in (icl[0].mean(), *mean_interval(icl[0]))]
    return out


def _share(shares: list[tuple], head: tuple[int, int]) -> tuple[float, float, float]:
    return next(((s, lo, hi) for l, h, s, lo, hi in shares if (l, h) == head), (math.nan,) * 3)


def two_layer_checks(arg: str, run: Run, shares: dict) -> list[Check]:
    """The induction heads remove the largest share at the end, and their share rises through the phase window."""
    name, heads = run.path.name, inductive(run)
    pp = shares["pattern_preserving"]
    steps = sorted(pp)
    final = pp[steps[-1]]
    ind = max((_share(final, h)[0] for h in heads), default=math.nan)
    others = [s for l, h, s, _, _ in final if (l, h) not in heads and np.isfinite(s)]
    checks = [check(arg, "the induction head(s) remove the largest share of in-context learning",
                    f"{name}: largest share removed by an induction head minus by any other head (window ICL, pattern-preserving)",
                    ind - max(others, default=math.nan) if heads else math.nan, ">", 0.0)]
    pc = phase(run)
    rise = math.nan
    if heads and pc["detected"]:
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        at = lambda edge: min(steps, key=lambda s: abs(s * per_step - edge))  # noqa: E731
        best = max(heads, key=lambda h: _share(final, h)[0])
        rise = _share(pp[at(pc["end_tokens"])], best)[0] - _share(pp[at(pc["start_tokens"])], best)[0]
    checks.append(check(arg, "that share rises through the phase window",
                        f"{name}: the induction head's share at the window's end minus at its start", rise, ">=", INDUCTION_RISE))
    return checks


def control_check(arg: str, run: Run, shares: dict) -> Check:
    pp = shares["pattern_preserving"]
    final = pp[max(pp)]
    top = max((s for _, _, s, _, _ in final if np.isfinite(s)), default=math.nan)
    return check(arg, "the one-layer control has no head that removes most of it",
                 f"{run.path.name}: largest share any head removes (window ICL, pattern-preserving)", top, "<", CONTROL_MAX)


def shares_figure(runs: list[Run], shares: dict[str, dict]) -> go.Figure:
    """Every head's pattern-preserving share over training, one panel per run, phase window shaded."""
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=[r.path.name for r in runs], shared_yaxes=True)
    for col, run in enumerate(runs, start=1):
        pp = shares[run.path.name]["pattern_preserving"]
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        heads = inductive(run)
        for i, (layer, head) in enumerate(sorted({(l, h) for rows in pp.values() for l, h, *_ in rows})):
            ys = [_share(pp[s], (layer, head)) for s in sorted(pp)]
            star = " *" if (layer, head) in heads else ""
            fig.add_scatter(x=[s * per_step for s in sorted(pp)], y=[y[0] for y in ys], name=f"{run.path.name} L{layer}H{head}{star}",
                            error_y=dict(type="data", symmetric=False, array=[y[2] - y[0] for y in ys],
                                         arrayminus=[y[0] - y[1] for y in ys], thickness=1),
                            line=dict(color=color(i)), row=1, col=col)
        pc = phase(run)
        if pc["detected"]:
            fig.add_vrect(x0=pc["start_tokens"], x1=pc["end_tokens"], fillcolor="grey", opacity=0.12, line_width=0, row=1, col=col)
    fig.update_xaxes(type="log", title="tokens seen")
    fig.update_yaxes(title="share of the window ICL score removed", row=1, col=1)
    fig.update_layout(title="Per-head ablation over training on text (pattern-preserving, zero; * induction head; bars: 95%)",
                      height=460, **LAYOUT)
    return fig


def timed_shares(run: Run) -> tuple[dict, float]:
    t0 = time.perf_counter()
    shares = head_shares(run, ablation_steps(run))
    return shares, time.perf_counter() - t0
