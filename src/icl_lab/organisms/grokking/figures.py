"""The grokking report's plots: train and test loss and accuracy on log steps with the three phases
shaded, Nanda et al.'s progress measures, the embedding's Fourier spectrum over training and at
the end, and the final model's neurons and attention as functions of (a, b). Each function takes
the run's measure table (`icl_lab.organisms.grokking.results.grokking_table`) and/or its summary
(`analysis/grokking.json`) and returns a plotly Figure, so a notebook can show any one inline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.organisms.grokking.task import component_names
from icl_lab.organisms.grokking.results import frequency_table
from icl_lab.report.figures import LAYOUT, color

PHASE_COLORS = {"memorisation": "#9ca3af", "circuit_formation": "#60a5fa", "cleanup": "#34d399"}
PHASE_LABELS = {"memorisation": "memorisation", "circuit_formation": "circuit formation", "cleanup": "cleanup"}


def _positive(wide: pd.DataFrame) -> pd.DataFrame:
    return wide[wide.step > 0]  # a log step axis has no step 0


def _shade(fig: go.Figure, phases: dict, rows: list[int]) -> None:
    """Shade each found phase (labelled above the first row) and mark where the test loss (solid)
    and the restricted loss (dotted) start to fall. The x axes are logarithmic: annotations take
    log10 coordinates there."""
    for name, label in PHASE_LABELS.items():
        ph = phases.get(name)
        if not ph:
            continue
        x0, x1 = max(ph["start"], 1), max(ph["end"], 1)
        for r in rows:
            fig.add_vrect(x0=x0, x1=x1, fillcolor=PHASE_COLORS[name], opacity=0.15, line_width=0, row=r, col=1)
        fig.add_annotation(x=float(np.log10(np.sqrt(x0 * x1))), y=1, xref="x", yref="y domain", yanchor="bottom", text=label,
                           showarrow=False, font=dict(size=10))
    for key, dash in (("test_loss_drop", "solid"), ("restricted_loss_drop", "dot")):
        mark = phases.get(key) or {}
        if mark.get("start"):
            for r in rows:
                fig.add_vline(x=mark["start"], line_dash=dash, line_color="#111", line_width=1, row=r, col=1)


def curves_figure(wide: pd.DataFrame, phases: dict, name: str = "") -> go.Figure:
    """Train and test loss (log) and accuracy against training step (log), phases shaded; the solid
    line marks where the test loss starts to fall, the dotted one where the restricted loss does."""
    w = _positive(wide)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    for i, split in enumerate(("train", "test")):
        fig.add_scatter(x=w.step, y=w[f"{split}_loss"], name=f"{split} loss", line=dict(color=color(i)), row=1, col=1)
        fig.add_scatter(x=w.step, y=w[f"{split}_accuracy"], name=f"{split} accuracy", line=dict(color=color(i), dash="dot"),
                        row=2, col=1)
    _shade(fig, phases, rows=[1, 2])
    fig.update_xaxes(type="log", title="training step", row=2, col=1)
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", title="loss (nats)", row=1, col=1)
    fig.update_yaxes(title="accuracy", range=[-0.03, 1.03], row=2, col=1)
    fig.update_layout(title=f"{name}: train and test loss and accuracy", height=560, legend=dict(orientation="h", y=-0.12), **LAYOUT)
    return fig


def progress_figure(wide: pd.DataFrame, phases: dict, name: str = "") -> go.Figure:
    """Nanda et al.'s progress measures against step (log): restricted and excluded loss with train
    and test loss; the Gini coefficients of the Fourier norms of W_E and W_L; the total sum of
    squared weights. Phases shaded."""
    w = _positive(wide)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["losses (nats)", "Gini coefficient of the Fourier norms", "total sum of squared weights"])
    for i, (col, label) in enumerate((("train_loss", "train loss"), ("test_loss", "test loss"),
                                      ("restricted_loss", "restricted loss (all inputs)"),
                                      ("excluded_loss", "excluded loss (train inputs)"))):
        fig.add_scatter(x=w.step, y=w[col], name=label, line=dict(color=color(i), dash="dot" if i < 2 else "solid"), row=1, col=1)
    fig.add_scatter(x=w.step, y=w.gini_embed, name="Gini W_E", line=dict(color=color(4)), row=2, col=1)
    fig.add_scatter(x=w.step, y=w.gini_logit_map, name="Gini W_L", line=dict(color=color(5)), row=2, col=1)
    fig.add_scatter(x=w.step, y=w.sum_squared_weights, name="sum of squared weights", line=dict(color=color(6)), row=3, col=1)
    _shade(fig, phases, rows=[1, 2, 3])
    for r in (1, 2, 3):
        fig.update_xaxes(type="log", row=r, col=1)
    fig.update_xaxes(title="training step", row=3, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=f"{name}: progress measures", height=760, legend=dict(orientation="h", y=-0.08), **LAYOUT)
    return fig


def spectrum_figure(wide: pd.DataFrame, key_freqs: list[int], name: str = "") -> go.Figure:
    """The embedding's norm in each frequency: over training (heatmap, step x frequency) and at the
    final checkpoint (bars, key frequencies in orange)."""
    freq = frequency_table(wide)
    freq = freq[freq.index > 0]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                        subplot_titles=["norm of W_E per frequency over training", "final checkpoint"])
    fig.add_heatmap(x=[str(s) for s in freq.index], y=freq.columns, z=freq.to_numpy().T, colorscale="Blues",
                    colorbar=dict(x=0.55, title="norm"), hovertemplate="step %{x}<br>k = %{y}: %{z:.2f}<extra></extra>", row=1, col=1)
    final = freq.iloc[-1]
    fig.add_bar(x=final.index, y=final.values, marker_color=["#ff7f0e" if k in key_freqs else "#9ca3af" for k in final.index],
                showlegend=False, hovertemplate="k = %{x}: %{y:.2f}<extra></extra>", row=1, col=2)
    fig.update_xaxes(title="training step (checkpoints)", nticks=8, row=1, col=1)
    fig.update_yaxes(title="frequency k (w = 2πk/p)", row=1, col=1)
    fig.update_xaxes(title="frequency k", row=1, col=2)
    keys = ", ".join(str(k) for k in key_freqs) or "none"
    fig.update_layout(title=f"{name}: the embedding in the Fourier basis (key frequencies: {keys})", height=460, **LAYOUT)
    return fig


def neuron_spectrum_figure(circuit: dict, p: int, name: str = "") -> go.Figure:
    """The MLP neurons' activations at `=` in the 2-D Fourier basis of (a, b): the share of their
    variance in each pair of components (constant term left out)."""
    labels = component_names(p)
    z = np.array(circuit["neuron_spectrum"])
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", hovertemplate="a: %{y}<br>b: %{x}<br>%{z:.4f}<extra></extra>"))
    fig.update_xaxes(title="component of b", showticklabels=False)
    fig.update_yaxes(title="component of a", showticklabels=False, autorange="reversed")
    fig.update_layout(title=f"{name}: neurons in the 2-D Fourier basis", height=560, width=640, **LAYOUT)
    return fig


def neuron_frequency_figure(circuit: dict, key_freqs: list[int], name: str = "") -> go.Figure:
    """Each neuron's best frequency against the share of its variance that frequency explains."""
    best, share = np.array(circuit["neuron_best_freq"]), np.array(circuit["neuron_best_share"])
    fig = go.Figure(go.Scatter(x=best + np.random.default_rng(0).uniform(-0.25, 0.25, len(best)), y=share, mode="markers",
                               marker=dict(size=5, color=["#ff7f0e" if k in key_freqs else "#9ca3af" for k in best], opacity=0.7),
                               text=[f"neuron {i}: k = {k}, {s:.0%}" for i, (k, s) in enumerate(zip(best, share))],
                               hovertemplate="%{text}<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="#888")
    fig.update_xaxes(title="the frequency that explains most of the neuron's variance")
    fig.update_yaxes(title="share of variance explained", range=[0, 1.02])
    fig.update_layout(title=f"{name}: neurons cluster by frequency ({circuit['neurons_explained']:.0%} of live neurons >= 50%)",
                      height=420, **LAYOUT)
    return fig


def inputs_figure(circuit: dict, name: str = "") -> go.Figure:
    """As functions of (a, b): each head's attention from `=` to `a`, and the most active neuron of
    each key frequency."""
    heads, neurons = circuit["attention_to_a"], circuit["neuron_examples"]
    panels = [(f"head {h}: attention to a", np.array(z), "Blues") for h, z in enumerate(heads)]
    panels += [(f"neuron {n}", np.array(z), "RdBu_r") for n, z in neurons.items()]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for t, _, _ in panels], horizontal_spacing=0.04,
                        vertical_spacing=0.12 / rows)
    for i, (title, z, scale) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        fig.add_heatmap(z=z, colorscale=scale, showscale=False, hovertemplate="a %{y}, b %{x}: %{z:.3f}<extra></extra>", row=r, col=c)
        fig.update_yaxes(autorange="reversed", title="a" if c == 1 else None, row=r, col=c)
        fig.update_xaxes(title="b", row=r, col=c)
    fig.update_layout(title=f"{name}: attention and neurons as functions of (a, b)", height=300 * rows + 80, **LAYOUT)
    return fig
