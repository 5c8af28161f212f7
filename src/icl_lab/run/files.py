"""`RunFiles`: a run directory opened read-only. It reads what the trainer and the measurement
pipeline wrote (config, metadata, training log, checkpoint steps, metrics table, summaries) and
never imports the model or loads a checkpoint, so the report can read a run without running it
(the import contract in pyproject.toml holds it to that).

Example:
    >>> files = open_run_files("runs/demo/synthetic-2l")
    >>> files.checkpoints[-1], files.summary()["induction_heads"]
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pandas as pd

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError
from icl_lab.run.store import MetricsStore
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.layout import RunLayout
from icl_lab.train.records import LOG_FIELDS, read_log, read_meta


class RunFiles:
    """A run directory's files, read-only: config, metadata, training log, checkpoint list, the
    metrics store and the stored analyses. Nothing here builds a model or loads a checkpoint, so the
    report and the server use this class; `Run` (`icl_lab.run.rundir`) adds the models."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} not found; train one with `icl-lab train --out {self.path}`")
        if not self.layout.config.is_file():
            raise CheckpointError(f"{self.path} has no config.json, so it is not an icl-lab run directory; check the path")

    def __repr__(self) -> str:
        last = self.checkpoints[-1] if self.checkpoints else None
        return f"{type(self).__name__}({str(self.path)!r}, steps={last}, status={self.meta.get('status')!r})"

    @cached_property
    def config(self) -> ExperimentConfig:
        """The run's `ExperimentConfig`. A relative `data.tokenizer_file` (an import's own
        tokenizer, "tokenizer.json") is resolved against the run directory, so a run can move."""
        cfg = ExperimentConfig.load(self.layout.config)
        file = cfg.data.tokenizer_file
        if file and not Path(file).is_absolute():
            cfg = cfg.replace(data={"tokenizer_file": str(self.path / file)})
        return cfg

    @property
    def meta(self) -> dict:
        """Seed, library versions, data fingerprint, device and status.

        Raises:
            CorruptFileError: meta.json is damaged.
        """
        return read_meta(self.layout.meta)

    @property
    def checkpoints(self) -> list[int]:
        """Steps that have a checkpoint, ascending."""
        return self.layout.checkpoint_steps()

    @property
    def log(self) -> pd.DataFrame:
        """The training log: one row per logged step (step, tokens, loss, loss_repeat, lr,
        tokens_per_s, elapsed_s). A last line still being written (or cut off by a crash) is left out.

        Raises:
            CorruptFileError: a line before the last is damaged.
        """
        rows = read_log(self.layout.log).rows
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(LOG_FIELDS))

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer a text run was trained with (None for synthetic runs)."""
        return Tokenizer.load(self.layout.tokenizer) if self.layout.tokenizer.is_file() else None

    def metrics(self) -> pd.DataFrame:
        """The tidy metrics table written by `icl-lab analyze` (one row per step x metric x layer
        x head x position).

        Raises:
            CheckpointError: the run has not been analysed yet.
        """
        if not self.store.exists():
            raise CheckpointError(f"{self.path} has not been analysed; run `icl-lab analyze {self.path}` first")
        return self.store.read()

    @cached_property
    def store(self) -> MetricsStore:
        """The run's `MetricsStore` (the locked owner of metrics.parquet)."""
        return MetricsStore(self.layout)

    def query(self, sql: str) -> pd.DataFrame:
        """SQL over the run's metrics table, named `metrics` (duckdb).

        Example:
            >>> run.query("select step, value from metrics where metric = 'icl_score' order by step")
        """
        return self.store.query(sql)

    def summary(self) -> dict:
        """The analysis summary (phase change, ICL score, heads, induction heads)."""
        if not self.layout.summary.is_file():
            raise CheckpointError(f"{self.path} has not been analysed; run `icl-lab analyze {self.path}` first")
        return json.loads(self.layout.summary.read_text())


def open_run_files(path: str | Path) -> RunFiles:
    """Open a run directory read-only (see `RunFiles`).

    Raises:
        CheckpointError: the directory is missing or not a run.
    """
    return RunFiles(path)
