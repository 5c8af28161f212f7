"""Where a Markov-chain run's measurements are stored: `analysis/markov.json` (the stages and the
final head scores) and the `markov.` rows of the metrics table. Files only, so the report reads
them without building a model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icl_lab.run.files import RunFiles
from icl_lab.run.results import read_json

PREFIX = "markov."


def summary_path(files: RunFiles) -> Path:
    """RUN/analysis/markov.json."""
    return files.layout.analysis_dir / "markov.json"


def read_summary(files: RunFiles) -> dict | None:
    """The run's `analysis/markov.json`, or None before `icl-lab markov RUN` measured it."""
    path = summary_path(files)
    return read_json(path, files) if path.is_file() else None


def markov_table(files: RunFiles) -> pd.DataFrame:
    """The `markov.` rows, one row per checkpoint and one column per metric (prefix dropped), `step` first."""
    t = files.store.read(["step", "metric", "value"])
    t = t[t.metric.str.startswith(PREFIX)]
    wide = t.pivot_table(index="step", columns="metric", values="value").reset_index()
    wide.columns = [str(c).removeprefix(PREFIX) for c in wide.columns]
    return wide.sort_values("step").reset_index(drop=True)
