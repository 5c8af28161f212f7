"""Assemble the report: one self-contained HTML file with plotly.js, the stylesheet, the figures
(as plotly JSON) and the attention viewer's data inlined, so it opens from disk with no network."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from importlib import resources

import plotly.io as pio
from plotly.offline import get_plotlyjs

from icl_lab.report.collect import RunData, report_section
from icl_lab.report.figures import (
    composition_figure,
    loss_by_position_figure,
    loss_figure,
    pca_figure,
)
from icl_lab.report.table import analysis_table_figure, final_table_html
from icl_lab.report.verdict import induction_heads

ASSETS = resources.files("icl_lab.report") / "assets"


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def _attention_payload(run: RunData) -> dict:
    a = run.attention
    _, _, n_layers, n_heads, n_pos, _ = a.patterns.shape
    return {"name": run.name, "n_layers": n_layers, "n_heads": n_heads, "n_pos": n_pos, "steps": a.steps,
            "tokens": a.tokens, "samples": a.samples,
            "induction": [list(h) for h in (induction_heads(run.summary)[0] if run.summary else [])],
            "patterns": base64.b64encode(a.patterns.tobytes()).decode("ascii")}


def _section(title: str, lead: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{title}</h2><p class=lead>{lead}</p>{body}</section>'


def plot_div(fig_id: str) -> str:
    """Where the figure `fig_id` is drawn on the page."""
    return f'<div class=plot id="{fig_id}"></div>'


def render_html(runs: list[RunData], verdict: list[str], refresh_s: int | None = None) -> str:
    """The report page for `runs` with the `verdict` lines in its verdict box.

    Args:
        refresh_s: reload the page this often (the server uses it while a run trains).
    """
    analysed = [r for r in runs if r.metrics is not None]
    figures = {"fig-loss": loss_figure(runs)}
    sections = [_section("Loss over training", "Training loss (solid) and the evaluation ICL score (dotted, right axis) "
                         "against tokens seen; shaded: the detected phase-change window.", plot_div("fig-loss"), "loss")]
    if analysed:
        figures |= {"fig-position": loss_by_position_figure(analysed), "fig-pca": pca_figure(analysed),
                    "fig-mat": analysis_table_figure(analysed)}
        sections += [
            _section("Loss by context position", "Loss at each token index at checkpoints through training (dark: early), "
                     "and how fast loss falls with log position over training (blue: later tokens are easier).",
                     plot_div("fig-position"), "position"),
            _section("Per-token-loss PCA", "Each checkpoint's losses on a fixed set of tokens, projected on the top two "
                     "principal components; trajectories turn during the phase change.", plot_div("fig-pca"), "pca"),
            _section("Model Analysis Table", "Every head's scores over training; * marks induction heads. "
                     "The final checkpoint's values follow.",
                     plot_div("fig-mat") + "".join(final_table_html(r) for r in analysed), "mat"),
        ]
    elif not any(r.organism for r in runs):
        sections.append(_section("Analysis", "No run is analysed yet; run <code>icl-lab analyze RUN</code> for the "
                                 "position, PCA and Model Analysis Table sections.", "", "analysis"))
    for r in (r for r in runs if r.organism):  # each organism's own section (`icl_lab.kinds.ReportSection`)
        section = report_section(r.kind)
        if section is None or section.render is None:
            continue
        figs, title, lead, body = section.render(r)  # the body places its figures with `plot_div`
        figures |= figs
        sections.append(_section(f"{title}: {html.escape(r.name)}", lead, body, f"{r.kind}-{r.name}"))
    viewer = [r for r in runs if r.attention is not None]
    if viewer:
        sections.append(_section(
            "Attention viewer", "Choose a head, a sequence and a checkpoint; hover a token to shade its sources by the "
            "attention it pays them. An induction head attends to the token after the previous copy of the current one.",
            '<div id=attn-viewer><div class=controls>'
            '<label>run <select id=attn-run></select></label><label>head <select id=attn-head></select></label>'
            '<label>sequence <select id=attn-sample></select></label>'
            '<label>checkpoint <input type=range id=attn-step min=0 step=1></label><span id=attn-step-label></span>'
            '</div><div id=attn-tokens></div><div id=attn-heatmap></div></div>', "attention"))
    composing = [r for r in runs if r.composition is not None]
    if composing:
        figures["fig-composition"] = composition_figure(composing)
        sections.append(_section("Composition graph", "Weight-based composition between heads of different layers at "
                                 "the final checkpoint: an edge where the score stands out from random weights.",
                                 plot_div("fig-composition"), "composition"))
    payload = {"figures": {k: json.loads(pio.to_json(f, validate=False)) for k, f in figures.items()},
               "attention": [_attention_payload(r) for r in viewer]}
    run_rows = "".join(f"<tr><td><b>{html.escape(r.name)}</b></td><td>{html.escape(r.description)}"
                       + "".join(f"<br><span class=missing>{html.escape(m)}</span>" for m in r.missing)
                       + f"</td><td>{'training' if r.training else ''}</td></tr>" for r in runs)
    names = ", ".join(r.name for r in runs)
    meta_refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    verdict_items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{meta_refresh}<title>icl-lab report: {html.escape(names)}</title>
<style>{asset("report.css")}</style>
<script>{get_plotlyjs()}</script></head>
<body><header><h1>icl-lab report</h1><p>{html.escape(names)} &middot; generated {dt.datetime.now():%Y-%m-%d %H:%M}</p></header>
<main><section id=verdict class=verdict><h2>Verdict</h2><ol>{verdict_items}</ol></section>
<section id=runs><h2>Runs</h2><table class=runs>{run_rows}</table></section>
{"".join(sections)}</main>
<script type="application/json" id="report-data">{script_json(payload)}</script>
<script>{asset("viewer.js")}</script></body></html>
"""
