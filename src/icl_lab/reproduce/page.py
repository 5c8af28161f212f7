"""The reproduction's report: one self-contained HTML page (plotly.js inlined, as `icl-lab
report`), a summary table of every argument, then a section per argument with the paper's claim,
the verdict table, the figures and notes."""

from __future__ import annotations

import datetime as dt
import html
import json
import math

import plotly.io as pio
from plotly.offline import get_plotlyjs

from icl_lab.report.page import asset, script_json
from icl_lab.reproduce.verdict import Check, Section


def _value(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _checks_table(checks: list[Check]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c.claim)}</td><td>{html.escape(c.metric)}</td><td class=num>{_value(c.value)}</td>"
        f"<td class=num>{html.escape(c.threshold)}</td>"
        f"<td class={'pass' if c.passed else 'fail'}>{'pass' if c.passed else 'fail'}</td></tr>"
        for c in checks)
    return f"<table class=checks><tr><th>claim</th><th>metric</th><th>our value</th><th>threshold</th><th></th></tr>{rows}</table>"


def _badge(passed: bool, n_pass: int, n: int) -> str:
    return f"<span class='badge {'pass' if passed else 'fail'}'>{n_pass}/{n} pass</span>"


def _section(sec: Section) -> str:
    n_pass = sum(c.passed for c in sec.checks)
    plots = "".join(f'<div class=plot id="{fig_id}"></div>' for fig_id in sec.figures)
    table = sec.table.to_html(index=False, classes="checks", border=0) if sec.table is not None else ""
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in sec.notes)
    return (f'<section id="{sec.argument}"><h2>{sec.argument.replace("-", " ").title()}: {html.escape(sec.title)}'
            f'{_badge(sec.passed, n_pass, len(sec.checks))}</h2><p class=lead><b>The paper:</b> {html.escape(sec.claim)} '
            f'<span class=note>({sec.seconds:.0f} s)</span></p>{_checks_table(sec.checks)}{plots}{table}{notes}</section>')


def render(sections: list[Section], scale: str, seconds: float) -> str:
    """The page for `sections`, run at `scale` in `seconds`."""
    summary = "".join(
        f"<tr><td><a href='#{s.argument}'>{s.argument}</a></td><td>{html.escape(s.title)}</td>"
        f"<td class={'pass' if s.passed else 'fail'}>{sum(c.passed for c in s.checks)}/{len(s.checks)}</td>"
        f"<td class=num>{s.seconds:.0f} s</td></tr>"
        for s in sections)
    figures = {k: json.loads(pio.to_json(f, validate=False)) for s in sections for k, f in s.figures.items()}
    payload = {"figures": figures, "attention": []}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lab reproduce: In-context Learning and Induction Heads</title>
<style>{asset("report.css")}</style>
<script>{get_plotlyjs()}</script></head>
<body><header><h1>Reproducing "In-context Learning and Induction Heads" (Olsson et al., 2022)</h1>
<p>scale {html.escape(scale)} &middot; {seconds / 60:.1f} min &middot; generated {dt.datetime.now():%Y-%m-%d %H:%M}</p></header>
<main><section id=summary class=verdict><h2>Verdicts</h2>
<p class=lead>Each argument's checks compare a measured value with a threshold fixed in code before the run.</p>
<table class=checks><tr><th>argument</th><th></th><th>checks passed</th><th>time</th></tr>{summary}</table></section>
{"".join(_section(s) for s in sections)}</main>
<script type="application/json" id="report-data">{script_json(payload)}</script>
<script>{asset("viewer.js")}</script></body></html>
"""
