"""Ablation attribution over training: at every checkpoint of a run, every head's ablation (each
kind, full and pattern-preserving) scored by how much of the ICL score it removes and by the
projection of its per-token-loss change onto the phase change's before-and-after vector (Olsson
et al. 2022, Argument 3). Rows go into the run's tidy `analysis/metrics.parquet`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from icl_lab.errors import CheckpointError
from icl_lab.intervene.ablate import KINDS, ablate_heads, all_heads
from icl_lab.measure.analyze import analyze
from icl_lab.measure.evalset import EvalSet, load_eval_set
from icl_lab.measure.intervals import is_noise, mean_interval, removed_fraction_interval
from icl_lab.measure.placement import place
from icl_lab.measure.losses import icl_positions
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.trainer import library_versions

FORMS = {"pattern_preserving": True, "full": False}
PREFIX = "ablation."  # metric names: ablation.{kind}.{form}.{icl_removed_fraction|icl_delta|before_after_projection}

Progress = Callable[[str, int, int], None]


def removed_fraction(clean_icl: float, ablated_icl: float) -> float:
    """Share of the ICL score an ablation removes: 1 - ablated/clean. NaN when the clean model
    shows no in-context learning (clean ICL score >= 0), where a share is meaningless."""
    return 1.0 - ablated_icl / clean_icl if clean_icl < 0 else float("nan")


def _rows(run: Run, model: Transformer, ev: EvalSet, step: int, kinds, before_after: np.ndarray | None) -> list[dict]:
    base = {"run": run.path.name, "step": step, "tokens": step * run.config.train.batch_size * run.config.model.n_ctx}
    heads = all_heads(model)
    early, late = icl_positions(ev.tokens.shape[1])
    # only the losses the table needs: the ICL score's two tokens and each example's sampled token
    positions = torch.stack([torch.full_like(ev.ptl_positions, early - 1), torch.full_like(ev.ptl_positions, late - 1),
                             ev.ptl_positions], dim=1)  # [example, 3]
    rows = []
    for kind in kinds:
        for form, preserve in FORMS.items():
            losses = ablate_heads(model, ev.tokens, heads=heads, kind=kind, pattern_preserving=preserve, positions=positions).float().cpu()
            icl = losses[:, :, 1] - losses[:, :, 0]  # [1 + head, example]: per-example ICL scores
            rows += _head_rows(base, f"{PREFIX}{kind}.{form}", heads, icl, losses[:, :, 2].numpy(), before_after)
    return rows


def _head_rows(base: dict, prefix: str, heads, icl: torch.Tensor, ptl: np.ndarray, before_after: np.ndarray | None) -> list[dict]:
    """Rows for one ablation sweep: per head, the share of the ICL score removed and the change
    in it, each with a 95% bootstrap interval over examples; the share is NaN (with its interval)
    when the clean ICL score's interval reaches 0, where a share would be noise over noise."""
    clean = icl[0]
    noise = is_noise(*(float(x) for x in mean_interval(clean)))
    frac_lo, frac_hi = removed_fraction_interval(clean, icl[1:].T)  # [head]
    delta = icl[1:] - clean  # [head, example]
    delta_lo, delta_hi = mean_interval(delta.T)
    rows = []
    for i, (layer, head) in enumerate(heads):
        frac = (math.nan, math.nan, math.nan) if noise else (removed_fraction(float(clean.mean()), float(icl[i + 1].mean())),
                                                             float(frac_lo[i]), float(frac_hi[i]))
        values = {"icl_removed_fraction": frac, "icl_delta": (float(delta[i].mean()), float(delta_lo[i]), float(delta_hi[i]))}
        if before_after is not None:
            values["before_after_projection"] = (float((ptl[i + 1] - ptl[0]) @ before_after), math.nan, math.nan)
        for name, (v, lo, hi) in values.items():
            rows.append({**base, "metric": f"{prefix}.{name}", "layer": layer, "head": head, "value": v, "lo": lo, "hi": hi})
    return rows


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
        The ablation summary: `{run, step, icl_score, heads: [{layer, head, icl_removed_fraction,
        by_kind}]}` at the final checkpoint, where `icl_removed_fraction` is the share of the ICL
        score that pattern-preserving zero-ablation removes.
    """
    if not run.layout.eval_set.is_file() or not run.layout.metrics.is_file():
        analyze([run], n_examples=n_examples, device=device, dtype=dtype)
    ev = load_eval_set(run)
    ba = json.loads(run.layout.before_after.read_text())["vector"] if run.layout.before_after.is_file() else None
    before_after = np.asarray(ba) if ba is not None and len(ba) == len(ev.tokens) else None
    model = place(Transformer(run.config.model), device, dtype)
    rows: list[dict] = []
    steps = run.checkpoints
    for i, step in enumerate(steps):
        model.load_state_dict(load_weights(run.layout.checkpoint(step)))
        rows += _rows(run, model.eval(), ev, step, kinds, before_after)
        if progress is not None:
            progress(run.path.name, i + 1, len(steps))
    new = pd.DataFrame(rows)
    # this run's rows of these kinds are replaced; other kinds' and other stages' rows stay
    mine = {f"{PREFIX}{k}.{f}.{name}" for k in kinds for f in FORMS
            for name in ("icl_removed_fraction", "icl_delta", "before_after_projection")}
    settings = {"eval_set": ev.fingerprint, "versions": library_versions(), "n_examples": len(ev.tokens)}
    merged = run.store.write(new, clear=mine, provenance={m: settings for m in mine})
    return ablation_summary(run, merged)


def ablation_summary(run: Run, table: pd.DataFrame) -> dict:
    """The final checkpoint's ablations: per head, the share of the ICL score each kind and form
    removes, and for pattern-preserving zero-ablation its 95% interval. `note` says why the
    shares are empty when the clean ICL score is within noise of 0."""
    final = table[(table.step == table.step.max()) & table.metric.str.startswith(PREFIX)]
    if final.empty:
        raise CheckpointError(f"{run.path} has no ablation rows; run `icl-lab ablate {run.path}`")
    icl = table[(table.metric == "icl_score") & (table.step == table.step.max())]
    heads = []
    main = f"{PREFIX}zero.pattern_preserving.icl_removed_fraction"
    for (layer, head), group in final.groupby(["layer", "head"]):
        vals = {m.removeprefix(PREFIX): v for m, v in zip(group.metric, group.value)}
        ci = group[group.metric == main]
        by_kind = {k: {f: vals.get(f"{k}.{f}.icl_removed_fraction") for f in FORMS}
                   for k in KINDS if f"{k}.full.icl_removed_fraction" in vals}
        heads.append({"layer": int(layer), "head": int(head),
                      "icl_removed_fraction": vals.get("zero.pattern_preserving.icl_removed_fraction"),
                      "icl_removed_fraction_ci": [float(ci.lo.iloc[0]), float(ci.hi.iloc[0])] if len(ci) and "lo" in ci else None,
                      "by_kind": by_kind})
    out = {"run": str(run.path), "step": int(table.step.max()),
           "icl_score": float(icl.value.iloc[0]) if len(icl) else None,
           "icl_score_ci": [float(icl.lo.iloc[0]), float(icl.hi.iloc[0])] if len(icl) and "lo" in icl else None,
           "heads": heads}
    if out["icl_score_ci"] and is_noise(*out["icl_score_ci"]):
        out["note"] = ("the clean ICL score's 95% interval reaches 0, so the shares of it removed are left empty (NaN); "
                       "the changes in it (icl_delta) are in metrics.parquet")
    return out
