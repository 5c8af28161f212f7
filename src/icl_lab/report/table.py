"""The Model Analysis Table (Olsson et al. 2022): every head's prefix-matching, copying and
previous-token scores and its ablation attribution to the ICL score, over training. As small
multiples of [head x checkpoint] heatmaps, one row of panels per run, plus an HTML table of the
final checkpoint. Induction heads (see `icl_lab.report.verdict`) are starred and highlighted."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.report.collect import RunData
from icl_lab.report.figures import LAYOUT
from icl_lab.report.verdict import induction_heads

ATTRIBUTION = "ablation.zero.pattern_preserving.icl_removed_fraction"
# metric -> (column title, shared colour axis); the axes are defined in COLOR_AXES
COLUMNS = {
    "prefix_matching": ("prefix matching", "coloraxis"),
    "previous_token": ("previous token", "coloraxis"),
    "copying": ("copying", "coloraxis2"),
    "copying.null": ("copying null (another token)", "coloraxis2"),
    "copying_total": ("copying through the model", "coloraxis2"),
    "ov_eigen_positivity": ("OV eigenvalue positivity", "coloraxis2"),
    ATTRIBUTION: ("share of ICL removed by ablation", "coloraxis3"),
    "llc.head": ("per-head LLC", "coloraxis4"),  # `icl-lab llc --heads`
}
BLUES = [[0.0, "#f7fbff"], [1.0, "#08306b"]]
COLOR_AXES = {
    "coloraxis": dict(colorscale=BLUES, cmin=0, cmax=1, colorbar=dict(title="attention", x=1.01, y=0.85, len=0.3)),
    "coloraxis2": dict(colorscale="RdBu", cmin=-1, cmax=1, colorbar=dict(title="copying", x=1.01, y=0.5, len=0.3)),
    "coloraxis3": dict(colorscale="RdBu_r", cmin=-1, cmax=1, colorbar=dict(title="ICL removed", x=1.01, y=0.15, len=0.3)),
    "coloraxis4": dict(colorscale="Viridis", cmin=0, colorbar=dict(title="head LLC", x=1.08, y=0.5, len=0.6)),
}
RANGES = {"coloraxis": (0.0, 1.0, "Blues"), "coloraxis2": (-1.0, 1.0, "RdBu"), "coloraxis3": (-1.0, 1.0, "RdBu_r")}


def _starred(run: RunData) -> set[tuple[int, int]]:
    return set(induction_heads(run.summary)[0]) if run.summary else set()


def _head_label(layer: int, head: int, starred: set) -> str:
    return f"L{layer}H{head}{' *' if (layer, head) in starred else ''}"


def analysis_table_figure(runs: list[RunData]) -> go.Figure:
    """Small multiples: per run a row of heatmaps, one per metric, heads down and tokens across."""
    runs = [r for r in runs if r.metrics is not None]
    metrics = [m for m in COLUMNS if any((r.metrics.metric == m).any() for r in runs)]
    fig = make_subplots(rows=max(1, len(runs)), cols=max(1, len(metrics)), subplot_titles=[COLUMNS[m][0] for m in metrics],
                        horizontal_spacing=0.025, vertical_spacing=0.08, shared_yaxes=False)
    for row, run in enumerate(runs, start=1):
        starred = _starred(run)
        for col, metric in enumerate(metrics, start=1):
            t = run.metrics[(run.metrics.metric == metric) & (run.metrics.tokens > 0)]
            if t.empty:
                continue
            grid = t.pivot_table(index=["layer", "head"], columns="tokens", values="value")  # [head, checkpoint]
            labels = [_head_label(int(l), int(h), starred) for l, h in grid.index]
            title, axis = COLUMNS[metric]
            fig.add_heatmap(x=grid.columns, y=labels, z=grid.to_numpy(), coloraxis=axis,
                            hovertemplate=f"{run.name} %{{y}} {title}<br>tokens %{{x:.3s}}: %{{z:.3f}}<extra></extra>",
                            row=row, col=col)
            fig.update_xaxes(type="log", row=row, col=col, title="tokens seen" if row == len(runs) else None)
            fig.update_yaxes(autorange="reversed", showticklabels=col == 1, title=run.name if col == 1 else None, row=row, col=col)
    n_heads = max((r.metrics.pipe(lambda t: t[t.metric == "prefix_matching"].groupby(["layer", "head"]).ngroups) for r in runs), default=1)
    fig.update_layout(title="Model Analysis Table over training (* induction head)", **COLOR_AXES,
                      height=max(200, 40 + 22 * n_heads) * max(1, len(runs)) + 140, **LAYOUT)
    return fig


def _final_head_llc(run: RunData) -> dict[tuple[int, int], tuple[float, float, float]]:
    """(layer, head) -> (LLC, lo, hi) at the last checkpoint `icl-lab llc --heads` measured ({} if none)."""
    if run.metrics is None or not (run.metrics.metric == "llc.head").any():
        return {}
    t = run.metrics[run.metrics.metric == "llc.head"]
    t = t[t.step == t.step.max()]
    return {(int(r.layer), int(r.head)): (float(r.value), float(r.lo), float(r.hi)) for r in t.itertuples()}


def _cell(value: float | None, lo: float, hi: float, scale: str, ci: list | None = None) -> str:
    if value is None or not np.isfinite(value):
        return "<td class=num>-</td>"
    interval = f"<small> [{ci[0]:+.2f}, {ci[1]:+.2f}]</small>" if ci and all(np.isfinite(ci)) else ""
    x = (min(max(value, lo), hi) - lo) / (hi - lo)
    if scale == "Blues":
        bg = f"rgba(31,119,180,{x * 0.8:.2f})"
    else:  # diverging around the middle: blue for the high end of RdBu, red for the low end
        strength = abs(x - 0.5) * 1.6
        hue = "31,119,180" if (x > 0.5) == (scale == "RdBu") else "214,39,40"
        bg = f"rgba({hue},{strength:.2f})"
    return f'<td class=num style="background:{bg}">{value:+.3f}{interval}</td>'


def final_table_html(run: RunData) -> str:
    """The final checkpoint's Model Analysis Table as an HTML table (induction heads highlighted)."""
    if run.summary is None:
        return f"<p class=note>{html.escape(run.name)} is not analysed yet: run <code>icl-lab analyze {html.escape(run.path)}</code>.</p>"
    starred = _starred(run)
    removed = {}
    if run.ablation:
        removed = {(h["layer"], h["head"]): (h["icl_removed_fraction"], h.get("icl_removed_fraction_ci"))
                   for h in run.ablation["heads"]}
    head_cols = [m for m in COLUMNS if m not in (ATTRIBUTION, "llc.head")]
    head_llc = _final_head_llc(run)
    header = "".join(f"<th>{COLUMNS[m][0]}</th>" for m in head_cols) + f"<th>{COLUMNS[ATTRIBUTION][0]}</th>"
    header += "<th>per-head LLC</th>" if head_llc else ""
    rows = []
    for h in run.summary["heads"]:
        key = (h["layer"], h["head"])
        cells = "".join(_cell(h.get(m), *RANGES[COLUMNS[m][1]], ci=h.get("ci", {}).get(m)) for m in head_cols)
        cells += _cell(*removed.get(key, (None, None))[:1], *RANGES["coloraxis3"], ci=removed.get(key, (None, None))[1])
        if head_llc:
            value, lo, hi = head_llc.get(key, (None, None, None))
            top = max(v[0] for v in head_llc.values())
            cells += _cell(value, 0.0, max(top, 1e-9), "Blues", ci=None if value is None else [lo, hi])
        cls = " class=induction" if key in starred else ""
        rows.append(f"<tr{cls}><th>{_head_label(*key, starred)}</th>{cells}</tr>")
    note = "" if run.ablation else f" Ablation column empty: run <code>icl-lab ablate {html.escape(run.path)}</code>."
    if head_llc:
        note += (" Per-head LLC: the refined LLC of the head's weights at the last LLC checkpoint, [95% interval over "
                 "SGLD chains] (<code>icl-lab llc --heads</code>; docs/llc.md).")
    return (f"<table class=mat><caption>{html.escape(run.name)}, final checkpoint; [95% bootstrap interval over "
            f"evaluation examples].{note}</caption>"
            f"<tr><th>head</th>{header}</tr>{''.join(rows)}</table>")
