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

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError
from icl_lab.model.transformer import Transformer
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.layout import RunLayout


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
        """The run's `ExperimentConfig`."""
        return ExperimentConfig.load(self.layout.config)

    @property
    def meta(self) -> dict:
        """Seed, library versions, data fingerprint, device and status."""
        return json.loads(self.layout.meta.read_text()) if self.layout.meta.is_file() else {}

    @property
    def checkpoints(self) -> list[int]:
        """Steps that have a checkpoint, ascending."""
        return self.layout.checkpoint_steps()

    @property
    def log(self) -> pd.DataFrame:
        """The training log: one row per logged step (step, tokens, loss, loss_repeat, lr,
        tokens_per_s, elapsed_s)."""
        if not self.layout.log.is_file():
            return pd.DataFrame(columns=["step", "tokens", "loss", "loss_repeat", "lr", "tokens_per_s", "elapsed_s"])
        return pd.read_json(self.layout.log, lines=True)

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer a text run was trained with (None for synthetic runs)."""
        return Tokenizer.load(self.layout.tokenizer) if self.layout.tokenizer.is_file() else None

    def metrics(self) -> pd.DataFrame:
        """The tidy metrics table written by `icl-lab analyze` (one row per step x metric x layer
        x head x position).

        Raises:
            CheckpointError: the run has not been analysed yet.
        """
        if not self.layout.metrics.is_file():
            raise CheckpointError(f"{self.path} has not been analysed; run `icl-lab analyze {self.path}` first")
        return pd.read_parquet(self.layout.metrics)

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
