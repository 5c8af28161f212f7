"""Argument 6: across model sizes the phase change happens and in-context learning ends up about
equally strong. SmolLM2-135M (the built-in pretrained model) joins the table where it can be
imported; it is measured on text at a 512-token context, so it is listed, not judged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from icl_lab.errors import IclLabError
from icl_lab.measure.copying import copying_scores
from icl_lab.pipeline.evalstore import eval_set_for
from icl_lab.measure.induction import is_induction_head
from icl_lab.measure.head_scores import masked_pattern_scores, prefix_matching_mask
from icl_lab.measure.losses import icl_positions, icl_score, loss_by_token, per_token_losses
from icl_lab.pretrained.hf import builtin_model, import_model
from icl_lab.model.transformer import Transformer
from icl_lab.reproduce.family import Lab
from icl_lab.reproduce.readout import LAYOUT, color, inductive, phase
from icl_lab.reproduce.verdict import Section, check
from icl_lab.run.rundir import Run, load_run

# thresholds, fixed before any run
ICL_SPREAD = 0.15  # (max - min) / |mean| of the final ICL scores across the family

FAMILY = ("attn-2l", "attn-4l", "attn-2l-4h", "mlp-3l-2w", "attn-2l-4w")
PRETRAINED = "smollm2-135m"
PRETRAINED_EXAMPLES = 128


def parameters(model: Transformer) -> int:
    """Non-embedding parameters (the paper's size axis)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))


def _row(run: Run) -> dict:
    m = run.config.model
    pc = phase(run)
    heads = inductive(run)
    return {"model": run.path.name, "layers": m.n_layers, "width": m.d_model, "heads per layer": m.n_heads,
            "MLP": "yes" if m.d_mlp else "no", "non-embedding parameters": f"{parameters(run.model()):,}",
            "final ICL score (nats)": round(run.summary()["icl_score"]["final"], 3),
            "phase change (tokens)": f"{pc['start_tokens']:,.0f}-{pc['end_tokens']:,.0f}" if pc["detected"] else "none",
            "induction heads": ", ".join(f"L{l}H{h}" for l, h in heads) or "none", "data": "synthetic repeats, context "
            f"{m.n_ctx}"}


@torch.inference_mode()
def pretrained_row(lab: Lab) -> dict:
    """SmolLM2-135M: imported once into the lab, then its ICL score on the bundled corpus and its
    top prefix-matching heads (no full analysis: that takes minutes and 3 GB)."""
    path = lab.root / PRETRAINED
    if not (path / "config.json").is_file():
        lab.log(f"importing {PRETRAINED}")
        import_model(builtin_model(PRETRAINED), path, corpus="bundled")
    run = load_run(path)
    lab.log(f"measuring {PRETRAINED}")
    model = run.model()
    ev = eval_set_for(run, PRETRAINED_EXAMPLES)
    icl = icl_score(loss_by_token(per_token_losses(model, ev.tokens)))
    pm = masked_pattern_scores(model, ev.repeated[:8], prefix_matching_mask(ev.repeated.shape[1], ev.seg_len, ev.first))
    cp = copying_scores(model, ev.repeated[:8], first=ev.first, max_sources=256)
    flat = [(float(pm[l, h]), l, h) for l in range(pm.shape[0]) for h in range(pm.shape[1])
            if is_induction_head({"prefix_matching": pm[l, h], "copying": cp[l, h]})]
    top = [f"L{l}H{h} ({v:.2f})" for v, l, h in sorted(flat, reverse=True)[:4]]
    m = run.config.model
    return {"model": PRETRAINED, "layers": m.n_layers, "width": m.d_model, "heads per layer": m.n_heads, "MLP": "yes",
            "non-embedding parameters": f"{parameters(model):,}",
            "final ICL score (nats)": round(icl, 3), "phase change (tokens)": "not observable (one checkpoint)",
            "induction heads": ", ".join(top) or "none", "data": f"bundled text, context {ev.tokens.shape[1]}"}


def argument_6(lab: Lab, pretrained: bool) -> Section:
    arg = "argument-6"
    sec = Section(arg, "Continuity", "Small and large models show the same phase change, and in-context learning after "
                  "it is about equally strong whatever the model's size.")
    runs = [lab.run(n) for n in FAMILY]
    rows = [_row(r) for r in runs]
    icl = np.array([r["final ICL score (nats)"] for r in rows])
    detected = sum(phase(r)["detected"] for r in runs)
    sec.checks += [
        check(arg, "every model in the family has the phase change", f"models (of {len(runs)}) with a detected phase change",
              float(detected), "==", len(runs)),
        check(arg, "the ICL score after it is about the same", "(max - min) / |mean| of the final ICL scores",
              float((icl.max() - icl.min()) / abs(icl.mean())) if icl.mean() != 0 else math.nan, "<=", ICL_SPREAD),
    ]
    if pretrained:
        try:
            rows.append(pretrained_row(lab))
        except IclLabError as e:
            sec.notes.append(f"{PRETRAINED} left out: {e}")
    fig = go.Figure()
    for i, r in enumerate(rows[: len(runs)]):
        fig.add_scatter(x=[parameters(runs[i].model())], y=[r["final ICL score (nats)"]], mode="markers+text", text=[r["model"]],
                        textposition="top center", marker=dict(size=12, color=color(i)), showlegend=False)
    fig.add_hrect(y0=icl.mean() * (1 + ICL_SPREAD / 2), y1=icl.mean() * (1 - ICL_SPREAD / 2), fillcolor="#999", opacity=0.15, line_width=0,
                  annotation_text=f"mean ± {ICL_SPREAD / 2:.0%}", annotation_position="top left")
    fig.update_xaxes(type="log", title="non-embedding parameters")
    fig.update_yaxes(title="final ICL score (nats)")
    fig.update_layout(title="In-context learning after the phase change, across sizes", height=420, **LAYOUT)
    sec.figures["a6-continuity"] = fig
    sec.table = pd.DataFrame(rows)
    early, late = icl_positions(lab.scale.n_ctx)
    sec.notes.append(f"ICL score: loss at token {late} minus loss at token {early} of {lab.scale.n_ctx} (the paper's 500 and 50 "
                     "of 512, as fractions). "
                     + (f"{PRETRAINED}'s is measured on {PRETRAINED_EXAMPLES} windows of the bundled text at 512 tokens (50 vs 500), "
                        "with its induction heads by the same rule on 8 repeated sequences, so its row is not comparable "
                        "number for number and is not judged." if pretrained else ""))
    return sec
