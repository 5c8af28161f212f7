"""Ablation over training as a measurement object: at every checkpoint, every head's ablation
(`icl_lab.intervene.attribution.ablation_rows`) on the very evaluation set `analyze` stored, with
the per-token-loss change projected on the phase change's before-and-after vector when one was
found. `ablate_run` walks a run with it and stores the rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from icl_lab.errors import ConfigError
from icl_lab.intervene.ablate import COPY_TENSORS, KINDS, sweep_cache_bytes
from icl_lab.intervene.attribution import FORMS, ablation_rows
from icl_lab.measure.evalset import EvalSet
from icl_lab.pipeline.analyze import analyze
from icl_lab.pipeline.base import Context, Measurement, Progress, register, store_rows, walk
from icl_lab.pipeline.evalstore import load_eval_set
from icl_lab.pipeline.memory import check_memory, plan_memory
from icl_lab.run.results import ABLATION_PREFIX as PREFIX
from icl_lab.run.results import ablation_summary
from icl_lab.run.rundir import Run

_NAMES = ("icl_removed_fraction", "icl_delta", "before_after_projection")


@register
class Ablation(Measurement):
    """Every head ablated at every checkpoint, for each of `kinds`, full and pattern-preserving."""

    name, description = "ablation", "every head's ablation (zero, mean, resample; full and pattern-preserving) at every checkpoint"

    def __init__(self, kinds: Sequence[str] = KINDS, examples: int | None = None) -> None:
        self.kinds = tuple(kinds)
        self.examples = examples  # the first `examples` evaluation sequences only (None: all)

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        ba = json.loads(run.layout.before_after.read_text())["vector"] if run.layout.before_after.is_file() else None
        n = len(ev.tokens) if self.examples is None else self.examples
        self.before_after = np.asarray(ba)[:n] if ba is not None and len(ba) == len(ev.tokens) else None

    def owns(self, metric: str) -> bool:  # this run's rows of these kinds; other kinds' rows stay
        return any(metric == f"{PREFIX}{k}.{f}.{n}" for k in self.kinds for f in FORMS for n in _NAMES)

    def settings(self) -> dict:
        return {"kinds": list(self.kinds), **({"examples": self.examples} if self.examples is not None else {})}

    def floor_bytes(self, cfg, ev: EvalSet | None, itemsize: int) -> int:
        """One sequence's sweep cache (half the budget) and one copy of it (the other half)."""
        cache = sweep_cache_bytes(cfg, ev.tokens.shape[1], itemsize, range(cfg.n_layers), True)
        copy = COPY_TENSORS * itemsize * ev.tokens.shape[1] * max(cfg.d_model, cfg.d_mlp, cfg.n_heads * ev.tokens.shape[1])
        return 2 * max(cache, copy)

    def measure(self, ctx: Context) -> list[dict]:
        base = {"run": ctx.run.path.name, "step": ctx.step, "tokens": ctx.tokens}
        ev = ctx.ev if self.examples is None else first_examples(ctx.ev, self.examples)
        return [{**base, **r} for r in ablation_rows(ctx.model, ev, self.kinds, self.before_after, ctx.max_bytes)]


def first_examples(ev: EvalSet, n: int) -> EvalSet:
    """The evaluation set cut to its first `n` sequences (the random sequences stay whole)."""
    return replace(ev, tokens=ev.tokens[:n], ptl_positions=ev.ptl_positions[:n])


def is_ablated(run: Run, kinds: tuple[str, ...] = KINDS, examples: int | None = None) -> bool:
    """Whether the run's metrics table already holds ablation rows of every kind in `kinds` for
    every checkpoint, written after the latest checkpoint on the evaluation set the analysis
    stored now (an ablation on an older evaluation set is stale), on `examples` sequences."""
    steps = run.checkpoints
    if not steps or not run.store.exists() or not run.layout.eval_set.is_file():
        return False
    if run.layout.metrics.stat().st_mtime < run.layout.checkpoint(steps[-1]).stat().st_mtime:
        return False
    table = run.store.read(["step", "metric"])
    current = run.summary().get("provenance", {}).get("eval_set") if run.layout.summary.is_file() else None
    for kind in kinds:
        metric = f"{PREFIX}{kind}.pattern_preserving.icl_removed_fraction"
        prov = run.store.provenance(metric)
        if set(table[table.metric == metric].step) != set(steps) or prov.get("eval_set") != current or prov.get("examples") != examples:
            return False
    return True


def reusable_ablation(run: Run, kinds: tuple[str, ...] = KINDS, examples: int | None = None) -> dict | None:
    """The stored ablation summary of `run` when `ablate_run(run, kinds, examples=examples)` would only
    rewrite its rows (`is_ablated`), else None: `icl-lab ablate --reuse`.

    Args:
        kinds: ablation kinds ("zero", "mean", "resample"), as `ablate_run`'s.
        examples: the stored evaluation sequences ablated on, as `ablate_run`'s (None: all).

    Returns:
        The ablation summary (`icl_lab.run.results.ablation_summary`) at the final checkpoint, or
        None when the ablation must run.

    Example:
        >>> reusable_ablation(run, ("zero",)) or ablate_run(run, ("zero",))
    """
    return ablation_summary(run, run.metrics()) if is_ablated(run, kinds, examples) else None


def ablate_run(run: Run, kinds: tuple[str, ...] = KINDS, n_examples: int = 256, progress: Progress | None = None,
               device: str | None = None, dtype: str | None = None, max_memory: int | str | None = None,
               examples: int | None = None) -> dict:
    """Ablate every head at every checkpoint and add the rows to the run's metrics table, on the
    very evaluation set `analyze` used (running `analyze` first if the run has none).

    Args:
        kinds: ablation kinds ("zero", "mean", "resample").
        n_examples: evaluation sequences, when `analyze` has to run first.
        device, dtype: where to run the sweeps ("cpu", "cuda", ...; "fp32", "bf16", ...).
        max_memory: the most it may hold (as `analyze`'s); refused before any work if it cannot fit.
        examples: ablate on the first `examples` stored evaluation sequences only (a large model's
            sweep costs a forward pass per head and sequence: hours at 256 sequences on a CPU).

    Returns:
        The ablation summary (`icl_lab.run.results.ablation_summary`) at the final checkpoint.

    Raises:
        ResourceError: the sweep would not fit in `max_memory`.
    """
    if not run.layout.eval_set.is_file() or not run.layout.metrics.is_file():
        analyze([run], n_examples=n_examples, device=device, dtype=dtype, max_memory=max_memory)
    ev = load_eval_set(run)
    if examples is not None and not 2 <= examples <= len(ev.tokens):
        raise ConfigError(f"--examples {examples} is out of range; choose 2 to {len(ev.tokens)} (the stored evaluation set)")
    m = Ablation(kinds, examples)
    plan = plan_memory(run.config.model, [m], ev, max_memory, dtype)
    check_memory(plan, f"ablating {run.path.name}")
    table = walk(run, [m], ev, progress=progress, device=device, dtype=dtype, max_bytes=plan.working)
    merged = store_rows(run, [m], table, {"eval_set": ev.fingerprint, "n_examples": examples or len(ev.tokens)})
    return ablation_summary(run, merged)
