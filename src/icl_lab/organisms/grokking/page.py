"""One grokking run's report page: the verdict (grokked or not, the three phases, whether the
restricted loss fell before the test loss), the curves with the phases shaded, the progress
measures, the Fourier spectra and the final model's neurons and attention. The same offline HTML
as `icl-lab report` (plotly.js, the stylesheet and the figures inlined)."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from icl_lab.io import write_text
from icl_lab.organisms.grokking.figures import (
    curves_figure,
    inputs_figure,
    neuron_frequency_figure,
    neuron_spectrum_figure,
    progress_figure,
    spectrum_figure,
)
from icl_lab.report.page import asset, script_json
from icl_lab.run.files import RunFiles
from icl_lab.organisms.grokking.results import grokking_summary, grokking_table


def _range(ph: dict | None) -> str:
    return f"{ph['start']:,}–{ph['end']:,}" if ph else "not found"


def _where(drop: dict) -> str:
    """Where a drop lies among the phases: "within cleanup", "from circuit formation into cleanup",
    "starting in cleanup and ending after it"."""
    a, b = (drop[k].replace("_", " ") if drop[k] else None for k in ("phase_start", "phase_end"))
    if a and b:
        return f"within {a}" if a == b else f"from {a} into {b}"
    if a:
        return f"starting in {a} and ending after it"
    return "outside the phases found"


def verdict_lines(name: str, s: dict) -> list[str]:
    """The verdict box: outcome, phases, the central claim, the key frequencies."""
    f, ph = s["final"], s["phases"]
    lines = [f"{name}: {'groks' if s['grokked'] else 'does not grok'} — test accuracy {f['test_accuracy']:.1%} "
             f"(train {f['train_accuracy']:.1%}) at step {s['step']:,}, weight decay {s['weight_decay']:g}."]
    lines.append(f"Phases: memorisation {_range(ph.get('memorisation'))}, circuit formation {_range(ph.get('circuit_formation'))}, "
                 f"cleanup {_range(ph.get('cleanup'))} (steps).")
    test, restricted = ph.get("test_loss_drop"), ph.get("restricted_loss_drop")
    if test:
        lines.append(f"The test loss falls over steps {test['start']:,}–{test['end']:,} (10%–90% of its fall in decades), "
                     f"{_where(test)}.")
    if test and restricted:
        lead = test["start"] - restricted["start"]
        lines.append(f"The restricted loss starts falling at step {restricted['start']:,} ({_where(restricted)}), "
                     f"{abs(lead):,} steps {'before' if lead > 0 else 'after'} the test loss"
                     f"{' (the paper’s central claim holds)' if ph.get('restricted_before_test') else ''}.")
    fit = s["circuit"]["logit_fit"]
    lines.append(f"Key frequencies {', '.join(map(str, s['key_freqs'])) or 'none'}; Σ_k α_k cos(w_k(a+b−c)) over them explains "
                 f"{fit['explained']:.1%} of the centred logits' variance (loss {fit['loss']:.3g} nats against the model's "
                 f"{fit['loss_model']:.3g}).")
    return lines


def _section(title: str, lead: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{title}</h2><p class=lead>{lead}</p>{body}</section>'


def _plot(fig_id: str) -> str:
    return f'<div class=plot id="{fig_id}"></div>'


def _fit_table(s: dict) -> str:
    fit = s["circuit"]["logit_fit"]
    clusters = s["circuit"]["neuron_clusters"]
    rows = "".join(f"<tr><th>{k}</th><td class=num>{a:.3g}</td><td class=num>{clusters.get(str(k), clusters.get(k, 0))}</td></tr>"
                   for k, a in fit["alpha"].items())
    return (f"<table class=mat><caption>Key frequencies: logit fit and neurons</caption><tr><th>k</th><th>α_k</th>"
            f"<th>neurons (≥ 50% of variance)</th></tr>{rows}</table>")


def render_grokking_html(name: str, wide: pd.DataFrame, s: dict) -> str:
    """The page for one run, from its measure table and summary."""
    ph, circuit, keys = s["phases"], s["circuit"], s["key_freqs"]
    figures = {"fig-curves": curves_figure(wide, ph, name), "fig-progress": progress_figure(wide, ph, name),
               "fig-spectrum": spectrum_figure(wide, keys, name), "fig-neuron-spectrum": neuron_spectrum_figure(circuit, s["p"], name),
               "fig-neuron-freq": neuron_frequency_figure(circuit, keys, name), "fig-inputs": inputs_figure(circuit, name)}
    sections = [
        _section("Train and test", "Loss (log) and accuracy against training step (log). Shaded: the phases found from the "
                 "progress measures (grey memorisation, blue circuit formation, green cleanup); solid line: where the test loss "
                 "starts to fall (10% of its fall in decades), dotted: where the restricted loss does.", _plot("fig-curves"), "curves"),
        _section("Progress measures", "Restricted loss: only the key frequencies' part of the logits kept (all inputs). "
                 "Excluded loss: that part removed (training inputs). Gini coefficients of the Fourier-frequency norms of "
                 "the embedding W_E and of the neuron-to-logit map W_L (sparsity), and the total sum of squared weights "
                 "(Nanda et al. 2023, Section 5).", _plot("fig-progress"), "progress"),
        _section("Fourier spectrum of the embedding", "The embedding's norm in each frequency k (w = 2πk/p) over training and "
                 "at the end; the key frequencies (orange) are those holding at least twice the uniform share of its norm².",
                 _plot("fig-spectrum"), "spectrum"),
        _section("Neurons in the Fourier basis", "The MLP neurons' activations at `=` as functions of (a, b), in the 2-D Fourier "
                 "basis (share of their variance in each pair of components), and the share of each neuron's variance that its best "
                 "frequency explains.",
                 _plot("fig-neuron-spectrum") + _plot("fig-neuron-freq") + _fit_table(s), "neurons"),
        _section("Attention and neurons as functions of (a, b)", "Each head's attention from `=` to `a`, and the most active "
                 "neuron of each key frequency.", _plot("fig-inputs"), "inputs"),
    ]
    payload = {"figures": {k: json.loads(pio.to_json(f, validate=False)) for k, f in figures.items()}, "attention": []}
    verdict = "".join(f"<li>{html.escape(line)}</li>" for line in verdict_lines(name, s))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lab grokking report: {html.escape(name)}</title>
<style>{asset("report.css")}</style>
<script>{get_plotlyjs()}</script></head>
<body><header><h1>icl-lab grokking report</h1><p>{html.escape(name)}: (a + b) mod {s['p']}, {s['frac']:.0%} of pairs trained,
seed {s['seed']} &middot; generated {dt.datetime.now():%Y-%m-%d %H:%M}</p></header>
<main><section id="verdict" class=verdict><h2>Verdict</h2><ol>{verdict}</ol></section>
{"".join(sections)}</main>
<script type="application/json" id="report-data">{script_json(payload)}</script>
<script>{asset("viewer.js")}</script></body></html>
"""


def write_grokking_report(run: RunFiles, out: str | Path | None = None) -> Path:
    """Write the run's grokking page (default RUN/report.html) from its measures and summary.

    Raises:
        ConfigError: the run has not been measured yet.
    """
    out = Path(out) if out is not None else run.path / "report.html"
    write_text(out, render_grokking_html(run.path.name, grokking_table(run), grokking_summary(run)))
    return out
