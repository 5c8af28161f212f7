"""`icl-lab reproduce --data natural`: Arguments 1 and 3 on the natural-text presets (issue #16).

The family is `natural-2l` (three seeds), its one-layer control `natural-1l`, and
`natural-boost-2l` (one seed): the same model trained on text in which a labelled share of
windows repeats a span (`DataConfig.boost`). Every measurement, the boosted runs' included, is on
un-boosted validation text. Thresholds are fixed here, before the first natural run; each is a
claim that can fail."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lab.errors import ConfigError
from icl_lab.measure.induction import induction_rule
from icl_lab.reproduce.circuit_args import ablation_checks
from icl_lab.reproduce.family import Lab
from icl_lab.reproduce.readout import LAYOUT, best, color, inductive, phase, shade
from icl_lab.reproduce.training_args import _curves, co_occurrence_checks
from icl_lab.reproduce.verdict import Section, check
from icl_lab.run.rundir import Run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset

ARGUMENTS = ("argument-1", "argument-3")
BOOST_SEEDS = 1  # one seed of the boosted preset: it did not form heads faster (docs/natural-phase-change.md)
PURE, CONTROL, BOOST = "natural-2l", "natural-1l", "natural-boost-2l"

# thresholds, fixed before the first natural run
ICL_DROP = -0.3  # nats: final ICL score on validation text (tokens 50/512 and 500/512 of the context)
PASSAGE_GAIN = 0.5  # nats: a repeated validation passage's second copy is this much cheaper than its first
PREVIOUS_TOKEN = 0.5  # layer 0's best previous-token score on validation text
NO_INDUCTION_PM = 0.3  # the one-layer control's best prefix matching stays below this
INDUCTION_REMOVES = 0.5  # share of the ICL score the induction heads' ablation removes: these models have
# MLPs and read text, where other mechanisms also use context, so "most" is a half here (0.8 on synthetic data)


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
                          train=dict(steps=40, batch_size=8, warmup_steps=5, n_checkpoints=8, log_every=5))
    return cfg


def _later_induction_heads(run: Run) -> int:
    return sum(layer >= 1 for layer, _ in inductive(run))


def _final(run: Run, metric: str) -> float:
    table = run.metrics()
    rows = table[table.metric == metric]
    return float(rows[rows.step == rows.step.max()].value.iloc[0]) if len(rows) else math.nan


def _two_layer_checks(arg: str, run: Run) -> list:
    name = run.path.name
    return [
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
                  "model shows none of it. Boosted runs (labelled) trained on text with repeated spans; all are "
                  "measured on un-boosted validation text.")
    pure = [lab.run(PURE, seed) for seed in lab.scale.seeds]
    boosted = [lab.run(BOOST, seed) for seed in lab.scale.seeds[:BOOST_SEEDS]]
    control = lab.run(CONTROL)
    for run in pure + boosted:
        sec.checks += _two_layer_checks(arg, run)
    sec.checks += [
        check(arg, "a one-layer model forms no induction head", f"{control.path.name}: best prefix-matching score",
              best(control, "prefix_matching")[0], "<", NO_INDUCTION_PM),
        check(arg, "a one-layer model has no phase change", f"{control.path.name}: phase changes detected",
              float(phase(control)["detected"]), "==", 0),
        check(arg, "a one-layer model has no such ICL drop", f"{control.path.name}: final ICL score (nats)",
              control.summary()["icl_score"]["final"], ">", ICL_DROP),
    ]
    runs = pure + boosted + [control]
    sec.figures["n1-curves"] = _curves(runs, "Natural text: ICL score, prefix matching and loss over training (shaded: detected phase change)")
    sec.figures["n1-signals"] = _signals(runs)
    sec.notes.append("Training time on this machine: " + ", ".join(f"{r.path.name} {_minutes(r):.1f} min" for r in runs) + ".")
    sec.notes.append(f"Corpus: {pure[0].config.data.corpus}; boosted share of training windows: {boosted[0].config.data.boost:g} "
                     "(docs/natural-phase-change.md).")
    return sec


def argument_3(lab: Lab) -> Section:
    arg = "argument-3"
    sec = Section(arg, "Direct ablation on natural text", "Removing the induction heads of a model trained on natural "
                  "text removes much of its in-context learning on validation text; removing any other head does not.")
    checks, sec.figures["n3-ablation"] = ablation_checks(lab, arg, [lab.run(PURE)], INDUCTION_REMOVES)
    sec.checks += checks
    sec.notes.append(f"Induction heads: {induction_rule()}. 'Most' is {INDUCTION_REMOVES:g} here against 0.8 on synthetic "
                     "data: these models have MLPs and read text, where other heads also use the context.")
    return sec
