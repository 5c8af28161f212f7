"""The family report of a sweep folder (`icl-lab report SWEEP_DIR`): how the final ICL score and the
phase change's onset depend on model size, as in the paper's comparison across its small models,
with every seed shown, and a table of the trials linking each run. It reads `SWEEP/sweep.json` and
each run's stored summary; nothing is computed.

The size axis is the first swept field with more than one numeric value (e.g. `model.n_layers`);
the other swept fields split the family into series (e.g. `model.d_mlp`: 0 is attention-only)."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.report.figures import LAYOUT, color
from icl_lab.report.page import asset, script_json
from icl_lab.run.files import open_run_files


def is_sweep_dir(path: str | Path) -> bool:
    """A folder `icl-lab sweep` wrote: it holds sweep.json and is not itself a run."""
    p = Path(path)
    return (p / "sweep.json").is_file() and not (p / "config.json").is_file()


def family_table(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per trial: name, run, status, seed, each swept field, final loss, final ICL score,
    whether a phase change was detected and its start (tokens), and the induction heads."""
    path = Path(sweep_dir) / "sweep.json"
    try:
        sweep = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); rerun the sweep to rewrite it") from None
    rows = []
    for t in sweep["trials"]:
        row = {"name": t["name"], "run": t["run"], "status": t["status"], "seed": t.get("seed"), **t.get("point", {}),
               "final_loss": t.get("final_loss"), "icl_score": t.get("icl_score"), "phase_change": t.get("phase_change"),
               "phase_change_tokens": t.get("phase_change_tokens"), "induction_heads": ", ".join(t.get("induction_heads") or [])}
        if row["phase_change"] and row["phase_change_tokens"] is None:  # a sweep.json from before this column
            try:
                row["phase_change_tokens"] = open_run_files(t["run"]).summary()["phase_change"]["start_tokens"]
            except (CheckpointError, KeyError):
                pass
        rows.append(row)
    return pd.DataFrame(rows)


def _axes(table: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(size field, series fields) among the swept columns."""
    fixed = {"name", "run", "status", "seed", "final_loss", "icl_score", "phase_change", "phase_change_tokens", "induction_heads"}
    swept = [c for c in table.columns if c not in fixed and table[c].nunique() > 1]
    size = next((c for c in swept if pd.api.types.is_numeric_dtype(table[c])), None)
    return size, [c for c in swept if c != size]


def family_figure(table: pd.DataFrame):
    """Final ICL score and phase-change onset against the size field, a series per value of the
    other swept fields, every seed a point and the seeds' mean a line."""
    size, series = _axes(table)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("final ICL score (nats; lower: more in-context learning)",
                                                        "phase-change onset (tokens; none: not detected)"))
    ok = table[table.status == "ok"]
    x_of = (lambda d: d[size]) if size else (lambda d: d["seed"])
    groups = ok.groupby(series, dropna=False) if series else [("all", ok)]
    for i, (key, d) in enumerate(groups):
        label = ", ".join(f"{f.rsplit('.', 1)[-1]}={v}" for f, v in zip(series, key if isinstance(key, tuple) else (key,))) or "runs"
        for col, metric in ((1, "icl_score"), (2, "phase_change_tokens")):
            pts = d[d[metric].notna()]
            fig.add_scatter(x=x_of(pts), y=pts[metric], mode="markers", marker=dict(color=color(i), size=7, opacity=0.6),
                            name=label, legendgroup=label, showlegend=col == 1, row=1, col=col,
                            text=pts["name"], hovertemplate="%{text}: %{y:.3s}<extra></extra>")
            if size and len(pts):
                mean = pts.groupby(size)[metric].mean().sort_index()
                fig.add_scatter(x=mean.index, y=mean.values, mode="lines", line=dict(color=color(i)), name=f"{label} mean",
                                legendgroup=label, showlegend=False, row=1, col=col, hoverinfo="skip")
    title = size.rsplit(".", 1)[-1] if size else "seed"
    fig.update_xaxes(title=title, dtick=1 if size else None)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title="The family: in-context learning and the phase change against size",
                      **{**LAYOUT, "margin": dict(l=60, r=20, t=90, b=50)})
    return fig


def family_page(sweep_dir: str | Path) -> str:
    """The family report's HTML (offline: plotly.js and the stylesheet inlined)."""
    table = family_table(sweep_dir)
    fig = family_figure(table)
    size, series = _axes(table)
    shown = ["name", *([size] if size else []), *series, "seed", "status", "final_loss", "icl_score", "phase_change_tokens",
             "induction_heads"]
    head = "".join(f"<th>{html.escape(c.rsplit('.', 1)[-1].replace('_', ' '))}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in shown) + "</tr>" for _, r in table.iterrows())
    ok = table[table.status == "ok"]
    detected = int(ok.phase_change.fillna(False).astype(bool).sum())
    lines = [f"{len(ok)} of {len(table)} trials finished; {detected} show a phase change.",
             "Per run: `icl-lab report RUN` for its own report (loss, Model Analysis Table, attention viewer)."]
    payload = {"figures": {"fig-family": json.loads(pio.to_json(fig, validate=False))}, "attention": []}
    name = html.escape(Path(sweep_dir).name)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lab family report: {name}</title>
<style>{asset("report.css")}</style><script>{get_plotlyjs()}</script></head>
<body><header><h1>icl-lab family report</h1><p>{name} &middot; generated {dt.datetime.now():%Y-%m-%d %H:%M}</p></header>
<main><section id=verdict class=verdict><h2>Summary</h2><ol>{"".join(f"<li>{html.escape(x)}</li>" for x in lines)}</ol></section>
<section id=family><h2>Across the family</h2><div class=plot id="fig-family"></div></section>
<section id=trials><h2>Trials</h2><table class=mat><tr>{head}</tr>{body}</table></section></main>
<script type="application/json" id="report-data">{script_json(payload)}</script>
<script>{asset("viewer.js")}</script></body></html>
"""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return html.escape(str(v))
