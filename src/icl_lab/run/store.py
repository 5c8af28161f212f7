"""`MetricsStore`: the one owner of a run's tidy table, `RUN/analysis/metrics.parquet`.

Every stage that measures a run (`analyze`, `ablate`, the out-of-context scorer) writes through
it, and nothing else writes the file:

- **A lock around every read-modify-write** (`filelock`, `analysis/.metrics.lock`), so two
  commands measuring one run at once both keep their rows.
- **Replace by key.** A row's key is (run, step, metric, layer, head, position): writing rows
  replaces exactly the stored rows with the same keys, and `clear=` drops whole metrics a stage
  owns first (so a re-measured run loses rows of checkpoints that are gone). Other stages' rows stay.
- **Provenance per metric** in `analysis/provenance.json`: what each metric was computed with
  (versions, evaluation-set and tokenizer fingerprints, thresholds, settings), so a stale
  measurement can be detected and redone.
- **SQL from a notebook**: `store.query("select metric, avg(value) from metrics group by metric")`
  runs on duckdb over the Parquet file.

Writes are atomic (temporary file, fsync, rename), so a crash leaves the old table or the new one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.io import atomic_write, write_json
from icl_lab.train.layout import RunLayout

COLUMNS = ["run", "step", "tokens", "metric", "layer", "head", "position", "value", "baseline", "lo", "hi"]
KEY = ["run", "step", "metric", "layer", "head", "position"]
LOCK_TIMEOUT_S = 600.0  # a long ablation holds the lock only while it merges, so this is generous


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with exactly COLUMNS, in order, and stable dtypes."""
    frame = frame.copy()
    for col in COLUMNS:
        if col not in frame:
            frame[col] = pd.NA if col in ("layer", "head", "position") else np.nan
    frame = frame[COLUMNS].astype({"step": "int64", "tokens": "int64", "layer": "Int64", "head": "Int64",
                                   "position": "Int64", "value": "float64", "baseline": "float64",
                                   "lo": "float64", "hi": "float64"})
    return frame.reset_index(drop=True)


class MetricsStore:
    """The tidy table of one run directory. Build one with `MetricsStore(run.layout)` or `run.store`."""

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        self.path = layout.metrics
        self.provenance_path = layout.analysis_dir / "provenance.json"

    def __repr__(self) -> str:
        return f"MetricsStore({str(self.path)!r})"

    def lock(self) -> FileLock:
        """The store's lock; hold it around a read-modify-write. Re-entrant within a process: every
        handle on a run gets the same lock object (filelock's singleton), which counts nested holds
        (a new object per call would wait on its own process's lock until the timeout)."""
        self.layout.analysis_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str((self.layout.analysis_dir / ".metrics.lock").resolve()), timeout=LOCK_TIMEOUT_S, is_singleton=True)

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The whole table (or `columns`); an empty table with every column when nothing is stored."""
        if not self.path.is_file():
            return _tidy(pd.DataFrame(columns=COLUMNS))[columns or COLUMNS]
        try:
            frame = pd.read_parquet(self.path, columns=columns)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path} is unreadable ({type(e).__name__}); "
                                  f"rerun `icl-lab analyze {self.layout.root}` to rebuild it") from None
        return frame if columns else _tidy(frame)

    def write(self, rows: pd.DataFrame, clear: Iterable[str] = (), provenance: dict[str, dict] | None = None) -> pd.DataFrame:
        """Merge `rows` into the table under the lock and return the stored table.

        Args:
            rows: tidy rows (missing columns are filled with nulls).
            clear: metric names whose stored rows are all dropped first (the stage's own metrics).
            provenance: metric -> what it was computed with, merged into provenance.json.

        Raises:
            ConfigError: `rows` repeat a key (a bug in the writer, caught before anything is lost).
        """
        new = _tidy(rows)
        if new.duplicated(KEY).any():
            dup = new[new.duplicated(KEY, keep=False)].iloc[0]
            raise ConfigError(f"rows to store repeat the key {tuple(dup[KEY])}; each (run, step, metric, layer, head, "
                              "position) must appear once")
        with self.lock():
            old = self.read()
            old = old[~old.metric.isin(set(clear))]
            merged = pd.concat([old, new], ignore_index=True) if len(old) else new
            merged = merged.drop_duplicates(KEY, keep="last").sort_values(["step", "metric"], kind="stable")
            merged = merged.reset_index(drop=True)
            atomic_write(self.path, lambda p: merged.to_parquet(p, index=False))
            if provenance:
                write_json(self.provenance_path, {**self.provenance(), **provenance})
        return merged

    def provenance(self, metric: str | None = None) -> dict:
        """What each stored metric was computed with (`metric` alone, or all of them)."""
        if not self.provenance_path.is_file():
            return {} if metric is None else {}
        try:
            record = json.loads(self.provenance_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return record if metric is None else record.get(metric, {})

    def query(self, sql: str) -> pd.DataFrame:
        """Run `sql` with duckdb over the table, which it names `metrics`.

        Example:
            >>> run.store.query("select step, value from metrics where metric = 'icl_score' order by step")
        """
        try:
            import duckdb
        except ImportError:
            raise ConfigError("querying needs duckdb; pip install duckdb") from None
        if not self.path.is_file():
            raise CheckpointError(f"{self.layout.root} has no metrics yet; run `icl-lab analyze {self.layout.root}` first")
        con = duckdb.connect()
        try:
            con.execute(f"create view metrics as select * from read_parquet('{_sql_path(self.path)}')")
            return con.execute(sql).df()
        except duckdb.Error as e:
            raise ConfigError(f"query failed: {str(e).splitlines()[0]}") from None
        finally:
            con.close()


def _sql_path(path: Path) -> str:
    return str(path.resolve()).replace("'", "''")
