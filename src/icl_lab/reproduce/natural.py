"""`icl-lab reproduce --data natural`: Arguments 1 and 3 on the natural-text presets (issues #16, #26).

The family is `natural-2l` on the fresh seeds 3, 4 and 5 (the verdict) and its one-layer control
`natural-1l`; the tuning seeds 0-2, on which the preset was chosen, are reported apart when their
runs are in the lab. Every measurement is on validation text. Thresholds are fixed here, before
the fresh seeds were trained (the commit order shows it); each is a claim that can fail. The
boosted preset (`natural-boost-2l`, a labelled negative result) is no longer part of the verdict."""

from __future__ import annotations

import math

import numpy as np

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.errors import ConfigError
from icl_lab.measure.induction import induction_rule, passes_direct_rule
from icl_lab.reproduce.natural_ablation import (
    ABLATION_CHECKPOINTS,
    ABLATION_EXAMPLES,
    ablation_steps,
    control_check,
    shares_figure,
    timed_shares,
)
from icl_lab.reproduce.natural_ablation import two_layer_checks as two_layer_ablation_checks
from icl_lab.reproduce.family import Lab
from icl_lab.reproduce.readout import LAYOUT, best, color, inductive, phase, shade
from icl_lab.reproduce.training_args import _curves, co_occurrence_checks
from icl_lab.reproduce.verdict import Section, check
from icl_lab.run.rundir import Run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset

ARGUMENTS = ("argument-1", "argument-3")
FRESH_SEEDS = (3, 4, 5)  # pre-registered: never used while choosing the preset (issue #26); the headline
TUNING_SEEDS = (0, 1, 2)  # seeds the preset was chosen on: reported apart, labelled, when their runs are in the lab
PURE, CONTROL, BOOST = "natural-2l", "natural-1l", "natural-boost-2l"

# thresholds, fixed before the first natural run
ICL_DROP = -0.3  # nats: final ICL score on validation text (tokens 50/512 and 500/512 of the context)
PASSAGE_GAIN = 0.5  # nats: a repeated validation passage's second copy is this much cheaper than its first
PREVIOUS_TOKEN = 0.5  # layer 0's best previous-token score on validation text
NO_INDUCTION_PM = 0.3  # the one-layer control's best prefix matching stays below this


def natural_experiment(name: str, scale: str, seed: int, corpus: str | None = None) -> ExperimentConfig:
    """The config of natural family member `name` ("natural-2l", "natural-1l", "natural-boost-2l"):
    the preset itself at scale "default"; at "tiny", a few-second smoke-test version on bytes.

    Args:
        corpus: another text to train and measure on (a bundled name, a folder, hf:PATH).

    Raises:
        ConfigError: an unknown member, or a scale other than default and tiny.
    """
    if name not in (PURE, CONTROL, BOOST):
        raise ConfigError(f"unknown natural reproduction model {name!r}; known: {PURE}, {CONTROL}, {BOOST}")
    if scale not in ("default", "tiny"):
        raise ConfigError(f"--data natural runs at --scale default or tiny, not {scale!r}")
    cfg = get_preset(name).replace(seed=seed)
    if corpus:
        cfg = cfg.replace(data={"corpus": corpus})
    if scale == "tiny":
        cfg = cfg.replace(model=dict(d_model=16, n_heads=2, d_mlp=32 if cfg.model.d_mlp else 0, d_vocab=256, n_ctx=48),
                          data=dict(tokenizer="byte"),
                          train=dict(steps=40, batch_size=8, warmup_steps=5, n_checkpoints=8, log_every=5, compile=False, dtype="fp32"))
    return cfg


def _later_induction_heads(run: Run) -> int:
    return sum(layer >= 1 for layer, _ in inductive(run))


def _final(run: Run, metric: str) -> float:
    table = run.metrics()
    rows = table[table.metric == metric]
    return float(rows[rows.step == rows.step.max()].value.iloc[0]) if len(rows) else math.nan


def _two_layer_checks(arg: str, run: Run) -> list:
    name = run.path.name
    direct = sum(h["layer"] >= 1 and passes_direct_rule(h) for h in run.summary()["heads"])
    return [
        check(arg, "a layer-1 head passes #10's rule, unchanged", f"{name}: layer-1 heads with prefix matching > 0.5 and copying > 0.5",
              direct, ">=", 1),
        check(arg, "a layer-1 head passes the induction rule", f"{name}: induction heads in layer 1 ({induction_rule()})",
              _later_induction_heads(run), ">=", 1),
        check(arg, "in-context learning on validation text", f"{name}: final ICL score (nats)",
              run.summary()["icl_score"]["final"], "<=", ICL_DROP),
        *co_occurrence_checks(arg, run),
        check(arg, "a repeated passage is cheaper the second time", f"{name}: loss on the first copy minus the second (nats)",
              _final(run, "repeated_passage.gain"), ">=", PASSAGE_GAIN),
        check(arg, "layer 0 has a previous-token head on text", f"{name}: best layer-0 previous-token score on validation text",
              best(run, "previous_token", range(0, 1))[0], ">=", PREVIOUS_TOKEN),
    ]


def _signals(runs: list[Run]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("repeated passage: first copy minus second (nats)",
                                                        "best previous-token score on validation text"))
    for i, run in enumerate(runs):
        t = run.metrics()
        for col, metric, agg in ((1, "repeated_passage.gain", "mean"), (2, "previous_token", "max")):
            s = t[(t.metric == metric) & (t.tokens > 0)].groupby("tokens").value.agg(agg)
            fig.add_scatter(x=s.index, y=s.values, name=run.path.name, legendgroup=run.path.name, showlegend=col == 1,
                            line=dict(color=color(i)), row=1, col=col)
            shade(fig, run, i, row=1, col=col)
    fig.update_xaxes(type="log", title="tokens seen")
    fig.update_layout(title="The signals that random-token prefix matching cannot fake", height=420, **LAYOUT)
    return fig


def _minutes(run: Run) -> float:
    log = run.log
    return float(log.elapsed_s.iloc[-1]) / 60 if len(log) and "elapsed_s" in log else math.nan


def argument_1(lab: Lab) -> Section:
    arg = "argument-1"
    sec = Section(arg, "Co-occurrence on natural text", "Trained on natural text, two-layer models form induction heads "
                  "in a phase change, in which in-context learning improves sharply and the loss bumps; a one-layer "
                  f"model shows none of it. Checked on seeds {', '.join(map(str, FRESH_SEEDS))}, which were not used while "
                  "the preset was chosen; thresholds fixed before they were trained.")
    pure = [lab.run(PURE, seed) for seed in FRESH_SEEDS]
    control = lab.run(CONTROL, FRESH_SEEDS[0])
    for run in pure:
        sec.checks += _two_layer_checks(arg, run)
    sec.checks += [
        check(arg, "a one-layer model forms no induction head", f"{control.path.name}: best prefix-matching score",
              best(control, "prefix_matching")[0], "<", NO_INDUCTION_PM),
        check(arg, "a one-layer model has no phase change", f"{control.path.name}: phase changes detected",
              float(phase(control)["detected"]), "==", 0),
        check(arg, "a one-layer model has no such ICL drop", f"{control.path.name}: final ICL score (nats)",
              control.summary()["icl_score"]["final"], ">", ICL_DROP),
    ]
    tuning = [lab.run(PURE, seed) for seed in TUNING_SEEDS if (lab.root / f"{PURE}-s{seed}" / "config.json").is_file()]
    runs = pure + [control]
    sec.figures["n1-curves"] = _curves(runs, "Natural text: ICL score, prefix matching and loss over training "
                                             "(shaded: detected phase change)")
    sec.figures["n1-signals"] = _signals(runs)
    sec.notes.append("Training time on this machine: " + ", ".join(f"{r.path.name} {_minutes(r):.1f} min" for r in runs) + ".")
    sec.notes.append(f"Corpus: {pure[0].config.data.corpus} (docs/natural-phase-change.md).")
    for run in tuning:  # not part of the verdict: these seeds chose the preset
        failed = [c.claim for c in _two_layer_checks(arg, run) if not c.passed]
        sec.notes.append(f"Tuning seed {run.path.name} (used while choosing the preset, so not part of the verdict): "
                         + (f"fails {'; '.join(failed)}." if failed else "passes every two-layer check."))
    return sec


def argument_3(lab: Lab) -> Section:
    arg = "argument-3"
    sec = Section(arg, "Direct ablation on natural text", "Removing the induction heads of a model trained on natural "
                  "text removes the largest share of its in-context learning on validation text, a share that grows "
                  "through the phase change; no head of a one-layer model removes most of it.")
    pure = [lab.run(PURE, seed) for seed in FRESH_SEEDS]
    control = lab.run(CONTROL, FRESH_SEEDS[0])
    shares, seconds = {}, 0.0
    for run in pure + [control]:
        lab.log(f"ablating every head of {run.path.name} at {len(ablation_steps(run))} checkpoints")
        shares[run.path.name], took = timed_shares(run)
        seconds += took
    for run in pure:
        sec.checks += two_layer_ablation_checks(arg, run, shares[run.path.name])
    sec.checks.append(control_check(arg, control, shares[control.path.name]))
    sec.figures["n3-ablation"] = shares_figure(pure + [control], shares)
    widths = [(hi - lo) / 2 for name in shares for rows in shares[name]["pattern_preserving"].values()
              for *_, lo, hi in rows if np.isfinite(lo) and np.isfinite(hi)]
    sec.notes.append(f"Ablations took {seconds / 60:.1f} min on this machine ({ABLATION_EXAMPLES} evaluation windows, "
                     f"{ABLATION_CHECKPOINTS} log-spaced checkpoints plus the phase window's edges and the last, every head, "
                     "zero ablation, full and pattern-preserving). Shares are of the window ICL score (decision 28); their "
                     f"95% intervals are ±{np.median(widths):.2f} (median over every head and checkpoint) to ±{max(widths):.2f}.")
    sec.notes.append(f"Induction heads: {induction_rule()}.")
    return sec
