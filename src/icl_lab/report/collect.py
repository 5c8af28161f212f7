"""Gather what a report shows from run directories: the training log, the analysis tables, the
ablation attributions, and the attention patterns and composition graph the pipeline stored. It
reads files only (`icl_lab.run.files`, `icl_lab.run.results`): no model is built and no checkpoint
loaded, so the server can answer any GET at once. A run that has not been analysed yet gets its loss
curve, and `missing` names the command that fills each gap.

Example:
    >>> data = collect_run(icl_lab.run.open_run_files("runs/demo/synthetic-2l"))
    >>> data.attention.steps, data.attention.patterns.shape  # [step, sample, layer, head, query_pos, key_pos]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from icl_lab.errors import CheckpointError
from icl_lab.kinds import ReportSection, organism
from icl_lab.run.files import RunFiles
from icl_lab.run.results import ABLATION_PREFIX, Attention, ablation_summary, read_attention, read_composition, read_llc

LIVE_SECONDS = 120  # a run whose status is "running" and whose log moved this recently is training

__all__ = ["Attention", "RunData", "collect_run", "describe", "is_training", "missing_steps", "report_section"]


@dataclass(frozen=True)
class RunData:
    """One run's report inputs. `metrics`, `summary` and `ablation` are None before `analyze` /
    `ablate` ran, `attention` before `analyze` stored the viewer; `composition` is None for
    one-layer models (nothing to compose). `kind` is the run's data kind; `organism` holds what an
    organism's report section collected (`icl_lab.kinds.ReportSection.collect`), once measured.
    `missing`: one line per gap, naming the command that fills it."""

    name: str
    path: str
    description: str
    training: bool
    log: pd.DataFrame
    metrics: pd.DataFrame | None
    summary: dict | None
    ablation: dict | None
    attention: Attention | None
    composition: dict | None
    organism: dict | None = None
    kind: str = ""
    missing: list[str] = field(default_factory=list)
    llc: dict | None = None  # analysis/llc.json, once `icl-lab llc` ran


def describe(run: RunFiles) -> str:
    """One line: layers, width, heads, attention-only or MLP, positions, data, steps."""
    m, t = run.config.model, run.config.train
    kind = "attention-only" if m.attn_only else f"MLP {m.d_mlp}"
    extras = ", smeared keys" if m.smeared_key else ""
    d = run.config.data
    data = f"text ({d.corpus}, {d.tokenizer})" if d.kind == "text" else d.kind
    if d.boost:  # an augmentation: say so wherever the run is shown (decision 21)
        data += (f", BOOSTED: {d.boost:.0%} of training windows repeat spans of their own text; "
                 "measured on un-boosted validation text")
    return (f"{m.n_layers} layer{'s' * (m.n_layers > 1)}, d_model {m.d_model}, {m.n_heads} head{'s' * (m.n_heads > 1)}, "
            f"{kind}, {m.positional} positions{extras}; vocab {m.d_vocab}, context {m.n_ctx}; "
            f"{data} data; {t.steps:,} steps x {t.batch_size} x {m.n_ctx} tokens")


def is_training(run: RunFiles) -> bool:
    """Whether the run's trainer looks alive: status "running" and a log written recently."""
    log = run.layout.log
    return run.meta.get("status") == "running" and log.is_file() and time.time() - log.stat().st_mtime < LIVE_SECONDS


def report_section(kind: str) -> ReportSection | None:
    """The report section of data kind `kind`'s organism, or None (a core kind, or an organism
    whose runs get only the core sections)."""
    org = organism(kind)
    return org.report() if org is not None and org.report is not None else None


def missing_steps(run: RunFiles, data: dict) -> list[str]:
    """What the report cannot show yet for `run`, each with the command that fills the gap."""
    kind = run.config.data.kind
    if not run.checkpoints:
        return [f"no checkpoints yet: train it (`icl-lab train --out {run.path}`)"]
    if organism(kind) is not None:
        section = report_section(kind)
        return section.missing(run, data["organism"]) if section is not None else []
    out = []
    if data["summary"] is None:
        out.append(f"not analysed yet: run `icl-lab analyze {run.path}` for the measurements, attention viewer and verdict")
    elif data["attention"] is None:
        out.append(f"no stored attention viewer (an analysis from an older icl-lab): run `icl-lab analyze {run.path}`")
    if data["summary"] is not None and data["ablation"] is None:
        out.append(f"no ablations yet: run `icl-lab ablate {run.path}` for the per-head ablation table")
    return out


def collect_run(run: RunFiles) -> RunData:
    """Everything the report shows about `run`, read from its files."""
    try:
        metrics, summary = run.metrics(), run.summary()
    except CheckpointError:
        metrics, summary = None, None
    ablation = None
    if metrics is not None and metrics.metric.str.startswith(ABLATION_PREFIX).any():
        ablation = ablation_summary(run, metrics)
    section = report_section(run.config.data.kind)
    data = {"summary": summary, "ablation": ablation, "attention": read_attention(run),
            "organism": section.collect(run) if section is not None else None}
    return RunData(
        name=run.path.name, path=str(run.path), description=describe(run), training=is_training(run),
        log=run.log, metrics=metrics, composition=read_composition(run), missing=missing_steps(run, data), llc=read_llc(run),
        kind=run.config.data.kind, **data,
    )
