"""Ablation attribution on one model (Olsson et al. 2022, Argument 3): every head's ablation, each
kind, full and pattern-preserving, scored by how much of the ICL score it removes (with 95%
bootstrap intervals) and by the projection of its per-token-loss change onto the phase change's
before-and-after vector. Pure: a model and an evaluation set in, tidy rows out; the pipeline
(`icl_lab.pipeline.ablation`) applies it at every checkpoint and stores the rows."""

from __future__ import annotations

import math

import numpy as np
import torch

from icl_lab.intervene.ablate import ablate_heads, all_heads
from icl_lab.measure.evalset import EvalSet
from icl_lab.measure.intervals import is_noise, mean_interval, removed_fraction_interval
from icl_lab.measure.losses import icl_positions
from icl_lab.measure.memory import DEFAULT_MAX_BYTES
from icl_lab.model.transformer import Transformer
from icl_lab.run.results import ABLATION_PREFIX as PREFIX

FORMS = {"pattern_preserving": True, "full": False}


def removed_fraction(clean_icl: float, ablated_icl: float) -> float:
    """Share of the ICL score an ablation removes: 1 - ablated/clean. NaN when the clean model
    shows no in-context learning (clean ICL score >= 0), where a share is meaningless."""
    return 1.0 - ablated_icl / clean_icl if clean_icl < 0 else float("nan")


def ablation_rows(model: Transformer, ev: EvalSet, kinds, before_after: np.ndarray | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict]:
    """Rows (metric, layer, head, value, lo, hi) of every head's ablation of each kind and form on
    `ev`: `ablation.{kind}.{form}.{icl_removed_fraction|icl_delta|before_after_projection}`, each
    sweep streamed within `max_bytes`."""
    heads = all_heads(model)
    early, late = icl_positions(ev.tokens.shape[1])
    # only the losses the table needs: the ICL score's two tokens and each example's sampled token
    positions = torch.stack([torch.full_like(ev.ptl_positions, early - 1), torch.full_like(ev.ptl_positions, late - 1),
                             ev.ptl_positions], dim=1)  # [example, 3]
    rows = []
    for kind in kinds:
        for form, preserve in FORMS.items():
            losses = ablate_heads(model, ev.tokens, heads=heads, kind=kind, pattern_preserving=preserve, positions=positions,
                                  max_bytes=max_bytes).float().cpu()
            icl = losses[:, :, 1] - losses[:, :, 0]  # [1 + head, example]: per-example ICL scores
            rows += _head_rows(f"{PREFIX}{kind}.{form}", heads, icl, losses[:, :, 2].numpy(), before_after)
    return rows


def _head_rows(prefix: str, heads, icl: torch.Tensor, ptl: np.ndarray, before_after: np.ndarray | None) -> list[dict]:
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
            rows.append({"metric": f"{prefix}.{name}", "layer": layer, "head": head, "value": v, "lo": lo, "hi": hi})
    return rows
