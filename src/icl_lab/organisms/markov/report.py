"""The Markov-chain report section (`SECTION`): the KL of the model's predictions to the uniform,
unigram and bigram strategies over training, the stages shaded, the layer-1 heads' statistical
induction score and the layer-0 previous-token score, and one verdict line per run."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.kinds import ReportSection
from icl_lab.report.collect import RunData
from icl_lab.report.figures import LAYOUT, color
from icl_lab.report.page import plot_div
from icl_lab.run.files import RunFiles
from icl_lab.organisms.markov.results import markov_table, read_summary

STAGE_COLORS = {"uniform": "rgba(150,150,150,0.15)", "unigram": "rgba(255,165,0,0.15)", "bigram": "rgba(46,139,87,0.15)"}


def collect(run: RunFiles) -> dict | None:
    """The run's `analysis/markov.json` plus its per-checkpoint table (`"table"`), once measured."""
    summary = read_summary(run)
    return None if summary is None else {**summary, "table": markov_table(run)}


def missing(run: RunFiles, collected: dict | None) -> list[str]:
    return [] if collected else [f"not measured yet: run `icl-lab markov {run.path}`"]


def stages_text(ranges: list[dict]) -> str:
    """`uniform 0-200, unigram 250-1500, bigram 1600-6000`."""
    return ", ".join(f"{r['stage']} {r['start']:,}-{r['end']:,}" for r in ranges)


def verdict(run: RunData) -> list[str]:
    s = run.organism
    sih = s["sih"]
    reached = "reaches the bigram strategy" if s["reaches_bigram"] else "does not reach the bigram strategy"
    return [f"{run.name}: {reached}; stages {stages_text(s['stages'])}; statistical induction head "
            f"L{sih['layer']}H{sih['head']} {sih['score']:.2f} (uniform attention {sih['chance']:.2f})."]


def kl_figure(run: RunData) -> go.Figure:
    """KL to each strategy against step (log axes), the stages shaded; below, the head scores."""
    s, t = run.organism, run.organism["table"]
    t = t[t.step > 0]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06)
    for i, name in enumerate(("uniform", "unigram", "bigram")):
        fig.add_scatter(x=t.step, y=t[f"kl.{name}"], name=f"KL to {name}", mode="lines", line=dict(color=color(i)), row=1, col=1)
    heads = [c for c in t.columns if c.startswith(("sih.", "prev."))]
    for i, c in enumerate(heads):
        label = ("statistical induction " if c.startswith("sih.") else "previous token ") + c.split(".")[1]
        fig.add_scatter(x=t.step, y=t[c], name=label, mode="lines", line=dict(color=color(i + 3), dash="dot"), row=2, col=1)
    for r in s["stages"]:
        fig.add_vrect(x0=max(r["start"], 1), x1=max(r["end"], 1), fillcolor=STAGE_COLORS[r["stage"]], line_width=0,
                      annotation_text=r["stage"], annotation_position="top left", row=1, col=1)
    fig.update_xaxes(type="log", title="training step", row=2, col=1)
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", title="KL(strategy || model), nats", row=1, col=1)
    fig.update_yaxes(title="attention score", range=[0, 1.02], row=2, col=1)
    fig.update_layout(title=f"{run.name}: which strategy the model follows over training", height=620, **LAYOUT)
    return fig


def render(run: RunData) -> tuple[dict[str, go.Figure], str, str, str]:
    s = run.organism
    rows = "".join(f"<tr><th>{html.escape(r['stage'])}</th><td class=num>{r['start']:,}</td><td class=num>{r['end']:,}</td></tr>"
                   for r in s["stages"])
    table = (f"<table class=mat><caption>{html.escape(run.name)}: stages (nearest strategy at each checkpoint)</caption>"
             f"<tr><th>stage</th><th>first step</th><th>last step</th></tr>{rows}</table>")
    fig_id = f"fig-markov-{run.name}"
    lead = ("KL divergence from each strategy's prediction to the model's, on fixed evaluation chains (uniform; unigram: "
            "the states counted so far; bigram: the transitions counted out of the current state). The stage of a checkpoint "
            "is the nearest strategy (Edelman et al. 2024). Below: each layer-1 head's attention to the tokens that followed "
            "earlier copies of the current token (a statistical induction head scores near 1; uniform attention scores "
            f"{s['sih']['chance']:.2f}), and each layer-0 head's attention to the previous token.")
    return {fig_id: kl_figure(run)}, "In-context Markov chains", lead, plot_div(fig_id) + table


SECTION = ReportSection(collect=collect, missing=missing, render=render, verdict=verdict)
