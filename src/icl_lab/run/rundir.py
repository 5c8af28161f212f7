"""`Run`: a finished (or running) run directory opened for analysis. It reads what the trainer
wrote — config, metadata, training log, checkpoints — and rebuilds the model at any step.

Example:
    >>> run = icl_lab.load_run("runs/synthetic-2l")
    >>> run.checkpoints[:5]          # steps with a checkpoint
    >>> model = run.model(step=500)  # a Transformer with that step's weights
    >>> run.log.plot(x="tokens", y="loss_repeat", logx=True)
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pandas as pd

from icl_lab.data.text import load_tokens
from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError, DataError
from icl_lab.model.transformer import Transformer
from icl_lab.run.store import MetricsStore
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.layout import RunLayout
from icl_lab.train.records import LOG_FIELDS, read_log, read_meta


class Run:
    """A run directory. Build one with `load_run(path)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} not found; train one with `icl-lab train --out {self.path}`")
        if not self.layout.config.is_file():
            raise CheckpointError(f"{self.path} has no config.json, so it is not an icl-lab run directory; check the path")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, steps={self.checkpoints[-1] if self.checkpoints else None}, status={self.meta.get('status')!r})"

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

    def model(self, step: int | None = None, device: str = "cpu") -> Transformer:
        """The model with the weights of checkpoint `step` (default: the latest), in eval mode.

        Raises:
            CheckpointError: no such checkpoint; the message lists the nearest ones.
        """
        steps = self.checkpoints
        if not steps:
            raise CheckpointError(f"{self.path} has no checkpoints yet; train it or pass another run")
        if step is None:
            step = steps[-1]
        if step not in steps:
            near = sorted(steps, key=lambda s: abs(s - step))[:3]
            raise CheckpointError(f"no checkpoint at step {step} in {self.path.name}; nearest: {sorted(near)}")
        model = Transformer(self.config.model)
        try:
            model.load_state_dict(load_weights(self.layout.checkpoint(step)))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint step {step} does not match config.json ({str(e).splitlines()[0]}); the run directory was edited") from None
        return model.to(device).eval()


def load_run(path: str | Path) -> Run:
    """Open a run directory.

    Args:
        path: a directory written by `icl_lab.train` / `icl-lab train`.

    Returns:
        A `Run` with `.config`, `.meta`, `.checkpoints`, `.model(step=...)` and `.log`.

    Raises:
        CheckpointError: the directory is missing or not a run.
    """
    return Run(path)


def check_eval_data(run: Run) -> None:
    """Check that the text a text run is evaluated on is the text it was trained or imported with.

    Compares what `load_tokens(run.config.data, d_vocab)` gives (its tokenizer, and the windows'
    data fingerprint: corpus x tokenizer x BOS) with what meta.json recorded at training or import
    time. Synthetic runs, and runs from before meta.json kept a record, pass.

    Example:
        >>> check_eval_data(load_run("runs/natural-2l-seed0"))   # before measuring on its text

    Raises:
        DataError: the tokenizer, the BOS or the corpus differs; the one-line message names the fix.
    """
    cfg, meta = run.config.data, run.meta
    tok_fp, data_fp = meta.get("tokenizer_fingerprint"), meta.get("data_fingerprint")
    if cfg.kind != "text" or (tok_fp is None and data_fp is None):
        return
    tokens = load_tokens(cfg, run.config.model.d_vocab)
    name, now = run.path.name, tokens.tokenizer.fingerprint()
    if tok_fp is not None and now != tok_fp:
        source = f"data.tokenizer_file ({cfg.tokenizer_file})" if cfg.tokenizer_file else f"data.tokenizer={cfg.tokenizer!r}"
        own = run.layout.tokenizer
        fix = (f"set data.tokenizer_file in its config.json to {own.resolve()}" if own.is_file() and Tokenizer.load(own).fingerprint() == tok_fp
               else "restore the tokenizer it was made with, or import or train it again")
        raise DataError(f"{name} was made with tokenizer {tok_fp} but {source} gives {now}; {fix}")
    if data_fp is None or tokens.data_fingerprint == data_fp:
        return
    if "bos_id" in meta:  # the BOS its training windows started with
        was = meta["bos_id"]
    else:  # runs from before BOS: the token arrays alone match when only the BOS differs
        was = None if tokens.fingerprint == data_fp else tokens.bos
    if was != tokens.bos:
        fix = "set data.prepend_bos to false" if was is None else f"set data.bos_id to {was} and data.prepend_bos to true"
        raise DataError(f"{name} was trained on windows {_start(was)} but would be evaluated on windows {_start(tokens.bos)}; "
                        f"{fix} in its config.json")
    raise DataError(f"{name}'s evaluation text differs from its training text (data fingerprint {tokens.data_fingerprint}, "
                    f"recorded {data_fp}): corpus {cfg.corpus!r} changed; restore it or train the run again")


def _start(bos: int | None) -> str:
    return "with no BOS" if bos is None else f"starting with token {bos}"
