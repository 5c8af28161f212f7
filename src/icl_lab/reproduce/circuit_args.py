"""Arguments 3 and 5: ablating induction heads removes in-context learning, and the two-layer
circuit (previous-token head, K-composition, copying OV) is there in the weights and in path
patching."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from icl_lab.intervene.ablate import ablate_head_group
from icl_lab.intervene.attribution import PREFIX, removed_fraction
from icl_lab.intervene.patching import path_patch
from icl_lab.measure.induction import induction_rule
from icl_lab.measure.composition import composition_baseline, composition_scores
from icl_lab.measure.head_scores import repeated_random_tokens
from icl_lab.measure.losses import icl_score, loss_by_token
from icl_lab.pipeline import ablate_run, eval_set_for, is_ablated
from icl_lab.reproduce.family import Lab
from icl_lab.reproduce.readout import LAYOUT, best, color, inductive
from icl_lab.reproduce.verdict import Check, Section, check
from icl_lab.run.rundir import Run

# thresholds, fixed before any run
INDUCTION_REMOVES = 0.8  # share of the ICL score the induction heads' joint ablation removes
OTHER_REMOVES = 0.2  # the most any other single head may remove
PREVIOUS_TOKEN = 0.5
K_COMPOSITION_Z = 3.0
EIGEN_POSITIVITY = 0.5

ATTENTION_ONLY = ("attn-2l", "attn-3l", "attn-2l-4h")
REMOVED = f"{PREFIX}zero.pattern_preserving.icl_removed_fraction"


@torch.inference_mode()
def group_removed(run: Run, heads: list[tuple[int, int]], n_examples: int) -> float:
    """Share of the ICL score that pattern-preserving zero-ablation of `heads` together removes at
    the final checkpoint (NaN without heads)."""
    if not heads:
        return math.nan
    losses = ablate_head_group(run.model(), eval_set_for(run, n_examples).tokens, heads, kind="zero", pattern_preserving=True)
    clean, ablated = (icl_score(loss_by_token(x)) for x in losses)
    return removed_fraction(clean, ablated)


def most_removed(shares) -> float:
    """The largest share removed among heads that have one (NaN shares, where the clean ICL score
    is within noise, are left out whatever their order; NaN when none has a share). Python's
    `max` with NaNs depends on their position."""
    values = np.asarray(list(shares), dtype=float)
    return float(np.nanmax(values)) if np.isfinite(values).any() else math.nan


def ablation_checks(lab: Lab, arg: str, runs: list[Run], induction_removes: float = INDUCTION_REMOVES
                    ) -> tuple[list[Check], go.Figure]:
    """Argument 3's checks for `runs` (ablating every head at every checkpoint first where that is
    not done yet) and the per-head ablation figure."""
    checks = []
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=[r.path.name for r in runs], shared_yaxes=True)
    for col, run in enumerate(runs, start=1):
        if not is_ablated(run, ("zero",)):
            lab.log(f"ablating every head of {run.path.name} at every checkpoint")
            ablate_run(run, kinds=("zero",), n_examples=lab.scale.n_examples)
        heads = inductive(run)
        checks.append(check(arg, "ablating the induction heads removes most of the ICL score",
                            f"{run.path.name}: share removed by {_names(heads) or 'no induction heads'}",
                            group_removed(run, heads, lab.scale.n_examples), ">=", induction_removes))
        table = run.metrics()
        rows = table[table.metric == REMOVED]
        final = rows[rows.step == rows.step.max()]
        others = [v for l, h, v in zip(final["layer"], final["head"], final["value"]) if (int(l), int(h)) not in heads]
        checks.append(check(arg, "ablating any other head does not", f"{run.path.name}: most any other single head removes",
                            most_removed(others), "<=", OTHER_REMOVES))
        for i, ((layer, head), g) in enumerate(rows[rows.tokens > 0].groupby(["layer", "head"])):
            g = g.sort_values("tokens")
            star = " *" if (int(layer), int(head)) in heads else ""
            fig.add_scatter(x=g.tokens, y=g.value, name=f"{run.path.name} L{layer}H{head}{star}", line=dict(color=color(i)),
                            row=1, col=col)
    fig.update_xaxes(type="log", title="tokens seen")
    fig.update_yaxes(title="share of the ICL score removed", row=1, col=1)
    fig.update_layout(title="Per-head ablation over training (pattern-preserving, zero; * induction head)", height=440, **LAYOUT)
    return checks, fig


def argument_3(lab: Lab) -> Section:
    arg = "argument-3"
    sec = Section(arg, "Direct ablation", "Removing the induction heads at test time removes most of the in-context "
                  "learning in small attention-only models; removing other heads does not.")
    checks, sec.figures["a3-ablation"] = ablation_checks(lab, arg, [lab.run(n) for n in ATTENTION_ONLY])
    sec.checks += checks
    sec.notes.append(f"Induction heads: {induction_rule()} (docs/analysis.md). "
                     "The whole table is in each run's analysis/metrics.parquet.")
    return sec


def _names(heads) -> str:
    return ", ".join(f"L{l}H{h}" for l, h in heads)


def _repeat_loss(seg: int):
    def metric(logits, tokens):
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        return loss.view(len(tokens), -1)[:, seg:].mean(1)  # [batch]: loss on the repeats
    return metric


def argument_5(lab: Lab) -> Section:
    arg = "argument-5"
    sec = Section(arg, "Mechanistic plausibility", "In a two-layer attention-only model, a layer-0 previous-token head "
                  "K-composes with a layer-1 induction head whose OV circuit copies.")
    run = lab.run("attn-2l")
    model = run.model()
    prev_score, prev = best(run, "previous_token", range(0, 1))
    later = [h for h in inductive(run) if h[0] >= 1]
    ind = later[0] if later else best(run, "prefix_matching", range(1, model.cfg.n_layers))[1]
    comp, z = {}, {}
    for mode in "qkv":
        mean, std = composition_baseline(model, mode)
        comp[mode] = (float(composition_scores(model, mode)[prev[0], prev[1], ind[0], ind[1]]), mean, std)
        z[mode] = (comp[mode][0] - mean) / std
    cfg = model.cfg
    n_ex = min(lab.scale.n_examples, 32)
    clean, seg = repeated_random_tokens(cfg.d_vocab, cfg.n_ctx, n_examples=n_ex, seed=0)
    corrupt, _ = repeated_random_tokens(cfg.d_vocab, cfg.n_ctx, n_examples=n_ex, seed=1)
    out = path_patch(model, clean, corrupt, sender=prev, receiver=ind, metric=_repeat_loss(seg))
    moved = {w: abs(out[w] - out["clean"]) for w in "qkv"}
    eig = next(h["ov_eigen_positivity"] for h in run.summary()["heads"] if (h["layer"], h["head"]) == ind)
    p, i = f"L{prev[0]}H{prev[1]}", f"L{ind[0]}H{ind[1]}"
    sec.checks += [
        check(arg, "layer 0 has a previous-token head", f"{p}: previous-token score", prev_score, ">=", PREVIOUS_TOKEN),
        check(arg, "it K-composes with the induction head (weights)",
              f"{p} -> {i} K-composition, baseline standard deviations above the random-matrix mean", z["k"], ">=", K_COMPOSITION_Z),
        check(arg, "it K-composes causally: patching its output moves the key path most",
              f"{p} -> {i} path patching: key effect / max(query, value effect)", moved["k"] / max(moved["q"], moved["v"], 1e-9), ">", 1),
        check(arg, "the induction head's OV circuit copies", f"{i}: OV eigenvalue positivity", eig, ">=", EIGEN_POSITIVITY),
    ]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"path patching {p} -> {i} (loss on repeats, nats)",
                                                        f"composition {p} -> {i} against random weights"))
    fig.add_bar(x=["query", "key", "value"], y=[out[w] - out["clean"] for w in "qkv"], marker_color=["#1f77b4", "#d62728", "#2ca02c"],
                showlegend=False, row=1, col=1)
    modes = ["Q", "K", "V"]
    fig.add_bar(x=modes, y=[comp[m][0] for m in "qkv"], name="score", marker_color="#555", row=1, col=2)
    fig.add_scatter(x=modes, y=[comp[m][1] for m in "qkv"], mode="markers", name="random mean ± 3 sd",
                    error_y=dict(array=[3 * comp[m][2] for m in "qkv"]), marker=dict(color="#d62728", size=10), row=1, col=2)
    fig.update_layout(title="The induction circuit of attn-2l", height=420, **LAYOUT)
    sec.figures["a5-circuit"] = fig
    sec.notes.append(f"Path patching: clean and corrupted inputs are different repeated random segments; metric: loss on the "
                     f"repeats (clean {out['clean']:.2f}, corrupted {out['corrupted']:.2f} nats). Q- and V-composition: "
                     f"{z['q']:+.1f} and {z['v']:+.1f} standard deviations from the baseline.")
    return sec
