"""The report's plots, as plotly figures: loss and ICL score over training with the phase window
shaded, loss by context position, the dLoss/d ln(position) heatmap, per-token-loss PCA
trajectories and the composition graph. Each function takes `RunData` and returns a
`plotly.graph_objects.Figure`, so a notebook can show any one of them inline (`fig.show()`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from icl_lab.report.collect import RunData

PALETTE = qualitative.Plotly
MODE_COLORS = {"q": "#1f77b4", "k": "#d62728", "v": "#2ca02c"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), font=dict(size=12))


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _series(run: RunData, metric: str) -> pd.DataFrame:
    t = run.metrics
    return t[(t.metric == metric) & (t.tokens > 0)].sort_values("tokens")


def _shade_phase(fig: go.Figure, run: RunData, i: int, **where) -> None:
    pc = run.summary["phase_change"] if run.summary else None
    if pc and pc["detected"]:
        fig.add_vrect(x0=pc["start_tokens"], x1=pc["end_tokens"], fillcolor=color(i), opacity=0.12, line_width=0,
                      annotation_text=f"{run.name} phase change", annotation_position="top left",
                      annotation_font_size=10, **where)


def loss_figure(runs: list[RunData]) -> go.Figure:
    """Training loss and evaluation ICL score against tokens seen (log axis), the ICL score with its
    95% bootstrap interval; each run's detected phase-change window shaded in its colour."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, run in enumerate(runs):
        log = run.log[run.log.tokens > 0]
        fig.add_scatter(x=log.tokens, y=log.loss, name=f"{run.name} train loss", line=dict(color=color(i)),
                        legendgroup=run.name)
        if run.metrics is not None:
            icl = _series(run, "icl_score")
            if "lo" in icl and icl.lo.notna().any():  # the 95% bootstrap interval as a band
                fig.add_scatter(x=list(icl.tokens) + list(icl.tokens[::-1]), y=list(icl.hi) + list(icl.lo[::-1]),
                                fill="toself", fillcolor=color(i), opacity=0.2, line=dict(width=0), hoverinfo="skip",
                                name=f"{run.name} ICL score 95% CI", legendgroup=run.name, showlegend=False, secondary_y=True)
            fig.add_scatter(x=icl.tokens, y=icl.value, name=f"{run.name} ICL score", legendgroup=run.name,
                            line=dict(color=color(i), dash="dot"), mode="lines+markers", marker_size=4, secondary_y=True,
                            error_y=dict(type="data", symmetric=False, array=icl.hi - icl.value, arrayminus=icl.value - icl.lo,
                                         thickness=1, width=0) if "lo" in icl else None)
            _shade_phase(fig, run, i)
    fig.update_xaxes(type="log", title="tokens seen")
    fig.update_yaxes(title="training loss (nats)", secondary_y=False)
    fig.update_yaxes(title="ICL score (nats)", secondary_y=True, showgrid=False)
    title = "Loss and in-context-learning score over training"
    if any(run.llc for run in runs):
        _add_llc(fig, runs)
        title = "Loss, in-context-learning score and local learning coefficient over training"
    fig.update_layout(title=title, legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return fig


def _add_llc(fig: go.Figure, runs: list[RunData]) -> None:
    """The LLC on a third axis (dashes; hollow markers: estimates that failed the health checks) and
    its stage boundaries as thin vertical lines, per run in its colour."""
    for i, run in enumerate(runs):
        if not run.llc:
            continue
        keep = [k for k, t in enumerate(run.llc["tokens"]) if t > 0]  # log axis
        x, y = [run.llc["tokens"][k] for k in keep], [run.llc["llc"][k] for k in keep]
        healthy = [run.llc["healthy"][k] for k in keep]
        fig.add_scatter(x=x, y=y, yaxis="y3", name=f"{run.name} LLC", legendgroup=run.name, mode="lines+markers",
                        line=dict(color=color(i), dash="dash", width=1.5), marker=dict(size=5, symbol=[
                            "circle" if ok else "circle-open" for ok in healthy]),
                        hovertemplate=f"{run.name} LLC %{{y:.1f}} at %{{x:.3s}} tokens<extra></extra>")
        for b in run.llc["stages"]["boundaries"]:
            fig.add_vline(x=b, line=dict(color=color(i), width=1, dash="dot"), opacity=0.6)
    fig.update_layout(xaxis=dict(domain=[0, 0.86]), yaxis3=dict(title="LLC (dashed)", overlaying="y", side="right",
                                                                anchor="free", position=0.97, showgrid=False))



def loss_by_position_figure(runs: list[RunData], n_curves: int = 6) -> go.Figure:
    """Per run, two panels: loss by context position at a few checkpoints (coloured by training
    progress), and dLoss/d ln(position) over training as a heatmap (blue: later tokens easier)."""
    runs = [r for r in runs if r.metrics is not None]
    titles = [t for r in runs for t in (f"{r.name}: loss by token index", f"{r.name}: dLoss / d ln(token index)")]
    fig = make_subplots(rows=max(1, len(runs)), cols=2, subplot_titles=titles or None, horizontal_spacing=0.12)
    for row, run in enumerate(runs, start=1):
        t = run.metrics
        by_pos = t[t.metric == "loss_by_position"]  # every checkpoint, step 0 too: an imported model has only that one
        steps = sorted(by_pos.step.unique())
        if not steps:
            continue
        picks = sorted({steps[int(k)] for k in np.unique(np.round(np.geomspace(1, len(steps), n_curves)) - 1)})
        colors = sample_colorscale("Viridis", list(np.linspace(0, 0.9, len(picks))))
        for c, step in zip(colors, picks):
            curve = by_pos[by_pos.step == step].sort_values("position")
            fig.add_scatter(x=curve.position, y=curve.value, mode="lines", line=dict(color=c), showlegend=False,
                            name=f"step {step}", hovertemplate=f"step {step}<br>token %{{x}}: %{{y:.3f}} nats<extra></extra>",
                            row=row, col=1)
        d = _series(run, "dloss_dlnpos").pivot_table(index="position", columns="tokens", values="value")
        lim = float(np.nanmax(np.abs(d.to_numpy()))) if d.size else 1.0
        fig.add_heatmap(x=d.columns, y=d.index, z=d.to_numpy(), colorscale="RdBu_r", zmid=0, zmin=-lim, zmax=lim,
                        colorbar=dict(len=0.8 / max(1, len(runs)), y=1 - (row - 0.5) / len(runs), title="dL/dln t"),
                        hovertemplate="tokens %{x:.3s}<br>token index %{y}<br>%{z:.3f}<extra></extra>", row=row, col=2)
        fig.update_xaxes(type="log", title="token index", row=row, col=1)
        fig.update_xaxes(type="log", title="tokens seen", row=row, col=2)
        fig.update_yaxes(title="loss (nats)", row=row, col=1)
        fig.update_yaxes(title="token index", row=row, col=2)
    fig.update_layout(title="Loss by context position", height=320 * max(1, len(runs)) + 80, **LAYOUT)
    return fig


def pca_figure(runs: list[RunData]) -> go.Figure:
    """Per-token-loss PCA trajectories, one marker per checkpoint coloured by log training
    progress; checkpoints inside the run's phase-change window get a black outline. Runs analysed
    together share one PCA space; runs from different analyses get their own panels."""
    runs = [r for r in runs if r.metrics is not None]
    groups: dict[tuple, list[tuple[int, RunData]]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(tuple(run.summary["pca"]["runs"]), []).append((i, run))
    fig = make_subplots(rows=1, cols=max(1, len(groups)), subplot_titles=[
        "shared space of " + ", ".join(r.name for _, r in g) for g in groups.values()] or None)
    for col, group in enumerate(groups.values(), start=1):
        ev = group[0][1].summary["pca"]["explained_variance"]
        for i, run in group:
            x, y = _series(run, "pca_1"), _series(run, "pca_2")
            if x.empty:  # one checkpoint (an imported model): no trajectory to draw
                continue
            progress = np.log(x.tokens.to_numpy(float))
            progress = (progress - progress.min()) / max(np.ptp(progress), 1e-9)
            pc = run.summary["phase_change"]
            inside = (x.tokens >= pc["start_tokens"]) & (x.tokens <= pc["end_tokens"]) if pc["detected"] else x.tokens < 0
            fig.add_scatter(
                x=x.value, y=y.value, mode="lines+markers", name=run.name, line=dict(color=color(i), width=1),
                marker=dict(color=progress, colorscale="Viridis", size=np.where(inside, 10, 6),
                            line=dict(color="black", width=np.where(inside, 1.5, 0)),
                            colorbar=dict(title="log tokens<br>(0 start, 1 end)", x=1.02) if col == 1 and i == group[0][0] else None),
                text=[f"{run.name} step {s} ({t:,.0f} tokens){' - in phase window' if w else ''}"
                      for s, t, w in zip(x.step, x.tokens, inside)],
                hovertemplate="%{text}<extra></extra>", row=1, col=col)
        fig.update_xaxes(title=f"PC1 ({ev[0]:.0%} of variance)", row=1, col=col)
        fig.update_yaxes(title=f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2", row=1, col=col)
    fig.update_layout(title="Per-token-loss PCA trajectories (outlined: inside the phase-change window)", height=500,
                      legend=dict(orientation="h", y=-0.15), **LAYOUT)
    return fig


def composition_figure(runs: list[RunData]) -> go.Figure:
    """Heads as nodes (x = layer, y = head) and Q/K/V-composition as edges, drawn where the score
    is at least `edge_z` standard deviations above random weights; width grows with z."""
    runs = [r for r in runs if r.composition is not None]
    fig = make_subplots(rows=1, cols=max(1, len(runs)), subplot_titles=[
        f"{r.name} (step {r.composition['step']})" for r in runs] or None)
    shown_modes: set[str] = set()
    for col, run in enumerate(runs, start=1):
        comp = run.composition
        offset = {"q": -0.12, "k": 0.0, "v": 0.12}  # three edges between one pair stay apart
        for e in (e for e in comp["edges"] if e["drawn"]):
            (la, ha), (lb, hb), m = e["source"], e["target"], e["mode"]
            base = comp["baselines"][m]
            fig.add_scatter(
                x=[la, (la + lb) / 2, lb], y=[ha, (ha + hb) / 2 + offset[m], hb + offset[m]], mode="lines",
                line=dict(color=MODE_COLORS[m], width=min(1 + e["z"] / 2, 12), shape="spline"),
                name=f"{m.upper()}-composition", legendgroup=m, showlegend=m not in shown_modes,
                text=[f"L{la}H{ha} -> L{lb}H{hb} {m.upper()}-composition {e['score']:.3f} "
                      f"(random {base['mean']:.3f} +/- {base['std']:.3f}, z = {e['z']:.1f})"] * 3,
                hovertemplate="%{text}<extra></extra>", row=1, col=col)
            shown_modes.add(m)
        heads = sorted({tuple(e["source"]) for e in comp["edges"]} | {tuple(e["target"]) for e in comp["edges"]})
        ind = {(h["layer"], h["head"]) for h in (run.summary or {}).get("induction_heads", [])}  # the rule's heads, as the verdict
        fig.add_scatter(x=[l for l, _ in heads], y=[h for _, h in heads], mode="markers+text", showlegend=False,
                        text=[f"L{l}H{h}" for l, h in heads], textposition="top center",
                        marker=dict(size=22, color=["#ff7f0e" if h in ind else "#cccccc" for h in heads],
                                    line=dict(color="black", width=1)),
                        hovertemplate="%{text}<extra></extra>", row=1, col=col)
        fig.update_xaxes(title="layer", dtick=1, row=1, col=col)
        fig.update_yaxes(title="head", dtick=1, row=1, col=col)
    fig.update_layout(title=f"Composition graph (edges: score >= random mean + {runs[0].composition['edge_z'] if runs else 2:g} std; "
                            "orange: induction heads by the rule)", height=420, **LAYOUT)
    return fig
