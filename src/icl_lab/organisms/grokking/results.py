"""Readers of what a grokking run's measurement stored: `analysis/grokking.json` (phases, key
frequencies, circuit) and the `grokking.` rows of the metrics table, widened to one column per
measure. Files only (no model), so the report page reads a run through them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icl_lab.errors import ConfigError
from icl_lab.run.files import RunFiles
from icl_lab.run.results import read_json

PREFIX = "grokking."


def grokking_path(files: RunFiles) -> Path:
    return files.layout.analysis_dir / "grokking.json"


def grokking_table(files: RunFiles) -> pd.DataFrame:
    """A modular-addition run's progress measures, one row per checkpoint and one column per
    measure (`step` first), read back from its metrics table.

    Raises:
        ConfigError: the run has not been measured (`icl-lab grok --run RUN`).
    """
    if not files.store.exists():
        raise ConfigError(f"{files.path} has no metrics yet; run `icl-lab grok --run {files.path}` first")
    t = files.store.read(["step", "metric", "value"])
    t = t[t.metric.str.startswith(PREFIX)]
    wide = t.pivot_table(index="step", columns="metric", values="value").reset_index()
    wide.columns = [str(c).removeprefix(PREFIX) for c in wide.columns]
    return wide.sort_values("step").reset_index(drop=True)


def frequency_table(wide: pd.DataFrame) -> pd.DataFrame:
    """The embedding's norm per frequency: [step x frequency k] from `grokking_table`'s `embed_norm.{k}` columns."""
    cols = sorted((c for c in wide.columns if c.startswith("embed_norm.")), key=lambda c: int(c.split(".")[1]))
    out = wide[cols].copy()
    out.columns = [int(c.split(".")[1]) for c in cols]
    out.index = wide.step
    return out


def grokking_summary(files: RunFiles) -> dict:
    """The run's `analysis/grokking.json`.

    Raises:
        ConfigError: not measured yet.
    """
    path = grokking_path(files)
    if not path.is_file():
        raise ConfigError(f"{files.path} has no grokking summary yet; run `icl-lab grok --run {files.path}` first")
    return read_json(path, files)
