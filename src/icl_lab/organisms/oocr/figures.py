"""The out-of-context reasoning report section: accuracy on every split over training (grokking
shows as a held-out curve rising long after the trained one), and the final model's bridge lens
and hop patching as [layer, position] heatmaps, with the verdict line (`SECTION`)."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.kinds import ReportSection
from icl_lab.organisms.oocr.results import summary_path
from icl_lab.report.collect import RunData
from icl_lab.report.figures import LAYOUT, color
from icl_lab.report.page import plot_div
from icl_lab.run.files import RunFiles
from icl_lab.run.results import read_json


def oocr_accuracy_figure(run: RunData) -> go.Figure:
    """Accuracy of every split against training step (log axis), with chance dashed."""
    acc, oocr = run.organism["accuracy"], run.organism
    fig = go.Figure()
    for i, (split, g) in enumerate(acc[acc.step > 0].groupby("split", sort=False)):
        g = g.sort_values("step")
        fig.add_scatter(x=g.step, y=g.value, name=split, mode="lines+markers", marker_size=4, line=dict(color=color(i)))
    fig.add_hline(y=oocr["chance"], line_dash="dash", line_color="#888", annotation_text="chance", annotation_position="bottom right")
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title="accuracy", range=[-0.03, 1.03])
    fig.update_layout(title=f"{run.name}: {oocr['task']} accuracy by split over training", height=420, **LAYOUT)
    return fig


def oocr_circuit_figure(run: RunData) -> go.Figure | None:
    """Per split and [layer, position]: how often the logit lens's top entity is the bridge and the
    answer, and how often patching in another query's residual stream makes the model answer as
    that query's bridge implies (two-hop) or as that query does (other tasks); None when nothing
    was analysed."""
    circuits = run.organism.get("circuits") or {}
    if not circuits:
        return None
    panels = [("bridge_lens", "bridge decoded"), ("answer_lens", "answer decoded"), ("hop_patching", "patch takes over")]
    if all(c.get("bridge_lens") is None for c in circuits.values()):
        panels = panels[1:]  # no task split has a bridge (reversal)
    splits = list(circuits)
    fig = make_subplots(rows=len(splits), cols=len(panels), horizontal_spacing=0.08, vertical_spacing=0.3 / len(splits),
                        subplot_titles=[f"{s}: {title}" for s in splits for _, title in panels])
    for r, split in enumerate(splits, start=1):
        for c, (key, _) in enumerate(panels, start=1):
            grid = circuits[split].get(key)
            if grid is None:
                continue
            rows = [f"L{l}" for l in range(len(grid) - 1)] + ["out"] if key != "hop_patching" else [f"L{l}" for l in range(len(grid))]
            names = circuits[split].get("positions") or [str(p) for p in range(len(grid[0]))]
            fig.add_heatmap(z=grid, x=[f"{p}:{n}" for p, n in enumerate(names)], y=rows, zmin=0, zmax=1, colorscale="Blues",
                            showscale=(r == 1 and c == len(panels)), row=r, col=c,
                            hovertemplate=f"{html.escape(split)} %{{y}} %{{x}}: %{{z:.2f}}<extra></extra>")
    fig.update_layout(title=f"{run.name}: is the bridge entity there, and where does the second hop read it?",
                      height=260 * len(splits) + 80, **LAYOUT)
    return fig


def oocr_table_html(run: RunData) -> str:
    """The final accuracy of every split next to chance."""
    o = run.organism
    rows = "".join(f"<tr><th>{html.escape(s)}</th><td class=num>{a:.1%}</td><td class=num>{o['loss'][s]:.2f}</td></tr>"
                   for s, a in o["splits"].items())
    return (f"<table class=mat><caption>{html.escape(run.name)} at step {o['step']:,} (chance {o['chance']:.1%})</caption>"
            f"<tr><th>split</th><th>accuracy</th><th>answer loss (nats)</th></tr>{rows}</table>")


def oocr_verdict(run: RunData) -> list[str]:
    """The verdict line: the final accuracy of every split."""
    o = run.organism
    splits = ", ".join(f"{s} {a:.0%}" for s, a in o["splits"].items())
    return [f"{run.name} ({o['task']}): {splits} (chance {o['chance']:.1%})."]


def collect(run: RunFiles) -> dict | None:
    """The run's `analysis/oocr.json` plus its per-checkpoint accuracy (`"accuracy"`: step, tokens,
    split, value), once `icl-lab oocr` scored it."""
    path = summary_path(run)
    if not path.is_file():
        return None
    table = run.store.read(["step", "tokens", "metric", "value"])
    table = table[table.metric.str.startswith("oocr.accuracy.")].copy()
    table["split"] = table.metric.str.removeprefix("oocr.accuracy.")
    return {**read_json(path, run), "accuracy": table.drop(columns="metric")}


def missing(run: RunFiles, collected: dict | None) -> list[str]:
    return [] if collected else ["not scored yet: score it with `icl-lab oocr TASK` (it reuses the trained run)"]


def render(run: RunData) -> tuple[dict[str, go.Figure], str, str, str]:
    """The run's section: accuracy over training, the final table, the circuit heatmaps."""
    figures = {f"fig-oocr-{run.name}": oocr_accuracy_figure(run)}
    body = plot_div(f"fig-oocr-{run.name}") + oocr_table_html(run)
    circuit = oocr_circuit_figure(run)
    if circuit is not None:
        figures[f"fig-oocr-circuit-{run.name}"] = circuit
        body += plot_div(f"fig-oocr-circuit-{run.name}")
    lead = ("Accuracy on trained facts and on every held-out split at each checkpoint (dashed: chance); then, on the final "
            "model, the logit lens at every layer and position (how often the bridge entity, or the answer, is the top entity) "
            "and hop patching (how often taking one position's residual stream from another query makes the model answer as "
            "that query's bridge implies).")
    return figures, "Out-of-context reasoning", lead, body


SECTION = ReportSection(collect=collect, missing=missing, render=render, verdict=oocr_verdict)
