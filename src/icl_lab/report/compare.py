"""`icl-lab compare A B [C ...]`: the trajectories of a run and its branches (or any runs) overlaid
on one offline page: loss, ICL score, best prefix-matching and previous-token scores against tokens,
each branch's fork (and release) marked, each run's phase window shaded, and a table of how far
each window moved against the first run, with intervals. It reads stored views only (the runs'
logs, metrics tables and summaries), as every report does."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from icl_lab.errors import ConfigError
from icl_lab.io import write_text
from icl_lab.report.figures import LAYOUT, color
from icl_lab.report.page import _section, asset, plot_div, script_json
from icl_lab.run.files import RunFiles, open_run_files

PANELS = (("loss", "evaluation loss (nats)", "mean"), ("icl_score", "ICL score (nats)", "mean"),
          ("prefix_matching", "best prefix-matching score", "max"), ("previous_token", "best previous-token score", "max"))


def _fork(run: RunFiles) -> dict | None:
    return run.meta.get("parent")


def compare_figure(runs: list[RunFiles], tables: dict[str, object]):
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in PANELS], shared_xaxes=True, vertical_spacing=0.1)
    for i, run in enumerate(runs):
        t = tables[run.path.name]
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        for k, (metric, _, agg) in enumerate(PANELS):
            s = t[(t.metric == metric) & (t.tokens > 0)].groupby("tokens").value.agg(agg)
            fig.add_scatter(x=s.index, y=s.values, name=run.path.name, legendgroup=run.path.name, showlegend=k == 0,
                            line=dict(color=color(i)), row=k // 2 + 1, col=k % 2 + 1)
        pc = run.summary().get("phase_change", {}) if run.layout.summary.is_file() else {}
        fork = _fork(run)
        for k in range(4):
            where = dict(row=k // 2 + 1, col=k % 2 + 1)
            if pc.get("detected"):
                fig.add_vrect(x0=pc["start_tokens"], x1=pc["end_tokens"], fillcolor=color(i), opacity=0.1, line_width=0, **where)
            for key, dash in (("step", "dash"), ("until", "dot")):
                if fork and fork.get(key) and fork[key] > 0:
                    fig.add_vline(x=fork[key] * per_step, line=dict(color=color(i), dash=dash, width=1), **where)
    fig.update_xaxes(type="log", title="tokens seen", row=2)
    fig.update_xaxes(type="log", row=1)
    fig.update_layout(title="Trajectories (shaded: phase window; dashed: fork; dotted: release)", height=640, **LAYOUT)
    return fig


def shift_rows(runs: list[RunFiles]) -> list[dict]:
    """Each run's phase window and its shift against the first run's, in tokens, with intervals from
    the windows' bootstrap intervals (NaN where a window or interval is missing)."""
    def window(run):
        if not run.layout.summary.is_file():
            return None
        pc = run.summary()["phase_change"]
        return pc if pc.get("detected") else None
    base = window(runs[0])
    rows = []
    for run in runs:
        pc = window(run)
        row = {"run": run.path.name, "fork": _fork(run), "start": pc["start_tokens"] if pc else math.nan,
               "end": pc["end_tokens"] if pc else math.nan, "start_ci": (pc or {}).get("start_ci"), "shift": math.nan, "shift_ci": None}
        if pc and base:
            row["shift"] = pc["start_tokens"] - base["start_tokens"]
            if pc.get("start_ci") and base.get("start_ci"):
                row["shift_ci"] = [pc["start_ci"][0] - base["start_ci"][1], pc["start_ci"][1] - base["start_ci"][0]]
        rows.append(row)
    return rows


def _shift_table(rows: list[dict]) -> str:
    def n(x):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}"
    body = []
    for r in rows:
        fork = r["fork"]
        what = "-" if not fork else f"{fork.get('intervention') or 'no intervention'} from step {fork['step']}" + (
            f" until {fork['until']}" if fork.get("until") else "")
        ci = f" [{n(r['shift_ci'][0])}, {n(r['shift_ci'][1])}]" if r["shift_ci"] else ""
        body.append(f"<tr><th>{html.escape(r['run'])}</th><td>{html.escape(what)}</td><td class=num>{n(r['start'])}</td>"
                    f"<td class=num>{n(r['end'])}</td><td class=num>{n(r['shift'])}{ci}</td></tr>")
    return ("<table class=mat><caption>Phase windows in tokens; shift: this run's window start minus the first run's "
            "(95% interval from the windows' bootstrap intervals; '-': no phase change detected)</caption>"
            "<tr><th>run</th><th>branch</th><th>window start</th><th>window end</th><th>shift of the start</th></tr>"
            + "".join(body) + "</table>")


def write_compare(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the comparison page of `paths` (default: the first run's `compare.html`).

    Raises:
        ConfigError: fewer than two runs, or a run that has not been analysed.
    """
    if len(paths) < 2:
        raise ConfigError("compare needs at least two runs, e.g. a run and its branch")
    runs = [open_run_files(p) for p in paths]
    missing = [r.path.name for r in runs if not r.store.exists()]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not analysed yet; run `icl-lab analyze {' '.join(str(p) for p in paths)}` first")
    tables = {r.path.name: r.store.read() for r in runs}
    out = Path(out) if out is not None else runs[0].path / "compare.html"
    figure = compare_figure(runs, tables)
    payload = {"figures": {"fig-compare": json.loads(pio.to_json(figure, validate=False))}, "attention": []}
    names = ", ".join(r.path.name for r in runs)
    sections = _section("Trajectories", "The runs' training trajectories on their own evaluation sets.", plot_div("fig-compare"), "compare")
    sections += _section("Phase windows", "Where each run's phase change happened, and how far it moved.",
                         _shift_table(shift_rows(runs)), "shifts")
    write_text(out, f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lab compare: {html.escape(names)}</title>
<style>{asset("report.css")}</style><script>{get_plotlyjs()}</script></head>
<body><header><h1>icl-lab compare</h1><p>{html.escape(names)} &middot; generated {dt.datetime.now():%Y-%m-%d %H:%M}</p></header>
<main>{sections}</main>
<script type="application/json" id="report-data">{script_json(payload)}</script>
<script>{asset("viewer.js")}</script></body></html>
""")
    return out
