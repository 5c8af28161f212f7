"""Ablation over training as a measurement object: at every checkpoint, every head's ablation
(`icl_lab.intervene.attribution.ablation_rows`) on the very evaluation set `analyze` stored, with
the per-token-loss change projected on the phase change's before-and-after vector when one was
found. `ablate_run` walks a run with it and stores the rows."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from icl_lab.intervene.ablate import KINDS
from icl_lab.intervene.attribution import FORMS, ablation_rows
from icl_lab.measure.evalset import EvalSet
from icl_lab.pipeline.analyze import analyze
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.pipeline.evalstore import load_eval_set
from icl_lab.run.results import ABLATION_PREFIX as PREFIX
from icl_lab.run.results import ablation_summary
from icl_lab.run.rundir import Run

_NAMES = ("icl_removed_fraction", "icl_delta", "before_after_projection")


@register
class Ablation(Measurement):
    """Every head ablated at every checkpoint, for each of `kinds`, full and pattern-preserving."""

    name, description = "ablation", "every head's ablation (zero, mean, resample; full and pattern-preserving) at every checkpoint"

    def __init__(self, kinds: Sequence[str] = KINDS) -> None:
        self.kinds = tuple(kinds)

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        ba = json.loads(run.layout.before_after.read_text())["vector"] if run.layout.before_after.is_file() else None
        self.before_after = np.asarray(ba) if ba is not None and len(ba) == len(ev.tokens) else None

    def measure(self, ctx: Context) -> list[dict]:
        base = {"run": ctx.run.path.name, "step": ctx.step, "tokens": ctx.tokens}
        return [{**base, **r} for r in ablation_rows(ctx.model, ctx.ev, self.kinds, self.before_after)]

    def owns(self, metric: str) -> bool:  # this run's rows of these kinds; other kinds' rows stay
        return any(metric == f"{PREFIX}{k}.{f}.{n}" for k in self.kinds for f in FORMS for n in _NAMES)

    def settings(self) -> dict:
        return {"kinds": list(self.kinds)}


def is_ablated(run: Run, kinds: tuple[str, ...] = KINDS) -> bool:
    """Whether the run's metrics table already holds ablation rows of every kind in `kinds` for
    every checkpoint, written after the latest checkpoint on the evaluation set the analysis
    stored now (an ablation on an older evaluation set is stale)."""
    steps = run.checkpoints
    if not steps or not run.store.exists() or not run.layout.eval_set.is_file():
        return False
    if run.layout.metrics.stat().st_mtime < run.layout.checkpoint(steps[-1]).stat().st_mtime:
        return False
    table = run.store.read(["step", "metric"])
    current = run.summary().get("provenance", {}).get("eval_set") if run.layout.summary.is_file() else None
    for kind in kinds:
        metric = f"{PREFIX}{kind}.pattern_preserving.icl_removed_fraction"
        if set(table[table.metric == metric].step) != set(steps) or run.store.provenance(metric).get("eval_set") != current:
            return False
    return True


def ablate_run(run: Run, kinds: tuple[str, ...] = KINDS, n_examples: int = 256, progress: Progress | None = None,
               device: str | None = None, dtype: str | None = None) -> dict:
    """Ablate every head at every checkpoint and add the rows to the run's metrics table, on the
    very evaluation set `analyze` used (running `analyze` first if the run has none).

    Args:
        kinds: ablation kinds ("zero", "mean", "resample").
        n_examples: evaluation sequences, when `analyze` has to run first.
        device, dtype: where to run the sweeps ("cpu", "cuda", ...; "fp32", "bf16", ...).

    Returns:
        The ablation summary (`icl_lab.run.results.ablation_summary`) at the final checkpoint.
    """
    if not run.layout.eval_set.is_file() or not run.layout.metrics.is_file():
        analyze([run], n_examples=n_examples, device=device, dtype=dtype)
    ev = load_eval_set(run)
    m = Ablation(kinds)
    table = walk(run, [m], ev, progress=progress, device=device, dtype=dtype)
    merged = store_rows(run, [m], table, {"eval_set": ev.fingerprint, "n_examples": len(ev.tokens)})
    return ablation_summary(run, merged)
