"""Readers of what the measurement pipeline stored in `RUN/analysis/`: the attention viewer's
patterns, the composition graph, the ablation summary (an organism's own files are read by its package).
They parse files only (no model, no checkpoint), so the report and the server read a run through
them. The writers are in `icl_lab.pipeline`.

    analysis/attention.safetensors   uint8 patterns [step, sample, layer, head, query_pos, key_pos] and steps
    analysis/attention.json          the viewer's samples (name, token strings), steps, tokens
    analysis/composition.json        Q/K/V-composition edges of the final checkpoint with their baselines
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file

from icl_lab.errors import CheckpointError
from icl_lab.run.files import RunFiles

ABLATION_PREFIX = "ablation."  # metric names: ablation.{kind}.{form}.{icl_removed_fraction|icl_delta|before_after_projection}
ABLATION_KINDS = ("zero", "mean", "resample")
ABLATION_FORMS = ("pattern_preserving", "full")


@dataclass(frozen=True)
class Attention:
    """Attention patterns for the viewer.

    Attributes:
        steps: checkpoint steps on the slider.
        tokens: tokens of each step (for the slider label).
        samples: one dict per sample: `{"name", "tokens": [str, ...]}`.
        patterns: uint8 [step, sample, layer, head, query_pos, key_pos], attention x 255 rounded.
    """

    steps: list[int]
    tokens: list[int]
    samples: list[dict]
    patterns: np.ndarray


def attention_paths(files: RunFiles) -> tuple[Path, Path]:
    return files.layout.analysis_dir / "attention.safetensors", files.layout.analysis_dir / "attention.json"


def composition_path(files: RunFiles) -> Path:
    return files.layout.analysis_dir / "composition.json"


def llc_path(files: RunFiles) -> Path:
    return files.layout.analysis_dir / "llc.json"


def read_llc(files: RunFiles) -> dict | None:
    """The run's `analysis/llc.json` (settings, curve, health, stages), or None before `icl-lab llc`."""
    path = llc_path(files)
    return read_json(path, files) if path.is_file() else None


def read_json(path: Path, files: RunFiles) -> dict:
    """A stored JSON file of `files`, or CheckpointError naming the command that rewrites it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}); rerun `icl-lab analyze {files.path}`") from None


def read_attention(files: RunFiles) -> Attention | None:
    """The stored viewer patterns, or None before `icl-lab analyze` stored them."""
    tensors, meta = attention_paths(files)
    if not tensors.is_file() or not meta.is_file():
        return None
    try:
        patterns = load_file(str(tensors))["patterns"]
    except (SafetensorError, OSError, KeyError) as e:
        raise CheckpointError(f"{tensors} is unreadable ({type(e).__name__}); rerun `icl-lab analyze {files.path}`") from None
    record = read_json(meta, files)
    return Attention(record["steps"], record["tokens"], record["samples"], patterns)


def read_composition(files: RunFiles) -> dict | None:
    """The stored composition graph (edges with scores and z against the random baseline), or None."""
    path = composition_path(files)
    return read_json(path, files) if path.is_file() else None


def is_noise(lo: float, hi: float) -> bool:
    """Whether an ICL score's interval reaches 0 (or beyond): no in-context learning to speak of."""
    return not hi < 0


def ablation_summary(files: RunFiles, table: pd.DataFrame) -> dict:
    """The final checkpoint's ablations: per head, the share of the ICL score each kind and form
    removes, and for pattern-preserving zero-ablation its 95% interval. `note` says why the
    shares are empty when the clean ICL score is within noise of 0.

    Raises:
        CheckpointError: the table has no ablation rows.
    """
    final = table[(table.step == table.step.max()) & table.metric.str.startswith(ABLATION_PREFIX)]
    if final.empty:
        raise CheckpointError(f"{files.path} has no ablation rows; run `icl-lab ablate {files.path}`")
    icl = table[(table.metric == "icl_score") & (table.step == table.step.max())]
    main = f"{ABLATION_PREFIX}zero.pattern_preserving.icl_removed_fraction"
    heads = []
    for (layer, head), group in final.groupby(["layer", "head"]):
        vals = {m.removeprefix(ABLATION_PREFIX): v for m, v in zip(group.metric, group.value)}
        ci = group[group.metric == main]
        by_kind = {k: {f: vals.get(f"{k}.{f}.icl_removed_fraction") for f in ABLATION_FORMS}
                   for k in ABLATION_KINDS if f"{k}.full.icl_removed_fraction" in vals}
        heads.append({"layer": int(layer), "head": int(head),
                      "icl_removed_fraction": vals.get("zero.pattern_preserving.icl_removed_fraction"),
                      "icl_removed_fraction_ci": [float(ci.lo.iloc[0]), float(ci.hi.iloc[0])] if len(ci) and "lo" in ci else None,
                      "by_kind": by_kind})
    out = {"run": str(files.path), "step": int(table.step.max()),
           "icl_score": float(icl.value.iloc[0]) if len(icl) else None,
           "icl_score_ci": [float(icl.lo.iloc[0]), float(icl.hi.iloc[0])] if len(icl) and "lo" in icl else None,
           "heads": heads}
    if out["icl_score_ci"] and is_noise(*out["icl_score_ci"]):
        out["note"] = ("the clean ICL score's 95% interval reaches 0, so the shares of it removed are left empty (NaN); "
                       "the changes in it (icl_delta) are in metrics.parquet")
    return out


def is_fresh(files: RunFiles, path: Path) -> bool:
    """Whether `path` was written after the run's latest checkpoint (a measurement to reuse)."""
    steps = files.checkpoints
    return bool(steps) and path.is_file() and path.stat().st_mtime >= files.layout.checkpoint(steps[-1]).stat().st_mtime
