"""icl-lab: train small transformers, watch induction heads and the in-context-learning phase change
form, and take the circuits apart.

Everything the CLI does is one call away:

    >>> import icl_lab
    >>> run = icl_lab.train(icl_lab.get_preset("synthetic-2l"), out="runs/synthetic-2l")
    >>> run = icl_lab.load_run("runs/synthetic-2l")
    >>> model = run.model(step=500)
    >>> icl_lab.measure.prefix_matching_scores(model)   # [layer, head]
    >>> icl_lab.analyze([run]); run.summary()            # `icl-lab analyze`: every checkpoint, stored
"""

from __future__ import annotations

from pathlib import Path

from icl_lab import intervene, measure, pipeline
from icl_lab.data import DataConfig
from icl_lab.errors import CheckpointError, ConfigError, DataError, IclLabError, NonFiniteError
from icl_lab.model import ActivationCache, ModelConfig, Transformer
from icl_lab.pretrained.load import load_model
from icl_lab.pipeline import ablate_run, analyze
from icl_lab.run import Run, load_run
from icl_lab.train import ExperimentConfig, StepRecord, TrainConfig
from icl_lab.train.presets import get_preset, preset_names
from icl_lab.train.trainer import Progress, fit

from icl_lab import organisms  # noqa: E402,F401  (registers every organism: docs/organisms.md)

__version__ = "0.1.0"


def train(config: ExperimentConfig, out: str | Path | None = None, resume: bool = False, progress: Progress | None = None) -> Run:
    """Train an experiment and open its run directory.

    Args:
        config: the experiment, e.g. `get_preset("synthetic-2l")` or `.replace(...)` of one.
        out: run directory (default `runs/<config.name>-seed<seed>`).
        resume: continue an interrupted run from its latest checkpoint, bit-identically.
        progress: optional callback(step, total, latest StepRecord) after every step.

    Returns:
        The `Run`.
    """
    out = Path(out) if out is not None else Path("runs") / f"{config.name}-seed{config.seed}"
    return load_run(fit(config, out, resume=resume, progress=progress))


__all__ = [
    "ActivationCache", "CheckpointError", "ConfigError", "DataConfig", "DataError", "ExperimentConfig", "IclLabError",
    "ModelConfig", "NonFiniteError", "Run", "StepRecord", "TrainConfig", "Transformer", "ablate_run", "analyze", "get_preset",
    "intervene", "load_model", "load_run", "measure", "pipeline", "preset_names", "train",
]
