"""Branches: a new run that continues another run from one of its checkpoints (weights, optimiser
state and data position, so it sees exactly the batches the parent saw afterwards), with its own
changes: another schedule, or an intervention held during training (issue #30). `meta.json`
records the parent and the fork step; the branch's own first checkpoint is the parent's at the
fork, so the branch directory is a complete run."""

from __future__ import annotations

from pathlib import Path

from icl_lab.errors import ConfigError
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.interventions import parse
from icl_lab.train.layout import RunLayout
from icl_lab.train.trainer import Fork, Progress, fit


def branch(parent: str | Path, from_step: int, out: str | Path, intervention: str | None = None, until: int | None = None,
           changes: dict | None = None, progress: Progress | None = None, resume: bool = False) -> Path:
    """Train a branch of `parent` from its checkpoint at `from_step` into `out`, with `intervention`
    held from the fork until step `until` (then released; None: to the end).

    Args:
        parent: the parent run's directory.
        from_step: a step the parent has a checkpoint at (0: the same start as the parent).
        intervention: a spec (`icl_lab.train.interventions`), e.g. "ablate:L0H0"; None: no intervention.
        until: the step at which the intervention is released.
        changes: config changes of the branch, as `ExperimentConfig.replace` takes them
            (e.g. `{"train": {"steps": 24000, "schedule": "wsd"}}`); the model and data must stay.
        resume: continue an interrupted branch in `out`.

    Example:
        >>> branch("runs/x", 0, "runs/x-abl", "ablate:L0H0")   # the phase change without a previous-token head

    Returns:
        The branch's run directory.

    Raises:
        ConfigError: no such checkpoint, the parent is unfinished there, or a change of the model or data.
    """
    parent = Path(parent)
    layout = RunLayout(parent)
    if not layout.config.is_file():
        raise ConfigError(f"{parent} is not a run directory; pass the run to branch from")
    steps = layout.checkpoint_steps()
    if from_step not in steps:
        near = sorted(steps, key=lambda s: abs(s - from_step))[:3]
        raise ConfigError(f"{parent.name} has no checkpoint at step {from_step}; nearest: {sorted(near)}")
    held = parse(intervention) if intervention else None
    base = ExperimentConfig.load(layout.config)
    cfg = base.replace(**(changes or {}))
    if held is not None and held.kind == "smear-keys":  # the one change of the model a branch may make
        if until is not None:
            raise ConfigError("smear-keys:on switches smeared keys on for the rest of the branch; drop --until")
        if base.model.smeared_key:
            raise ConfigError(f"{parent.name} already smears its keys; smear-keys:on would change nothing")
        base = base.replace(model={"smeared_key": True})
        cfg = cfg.replace(model={"smeared_key": True})
    if until is not None and until <= from_step:
        raise ConfigError(f"--until {until} must come after the fork step {from_step}")
    if cfg.model != base.model or cfg.data != base.data:
        raise ConfigError("a branch keeps its parent's model and data (it continues the same weights on the same "
                          "batches); change the training settings or an intervention instead")
    if cfg.train.steps <= from_step:
        raise ConfigError(f"the branch must train past its fork step {from_step}; set train.steps above it")
    name = cfg.name if changes and "name" in changes else f"{base.name}-branch"
    return fit(cfg.replace(name=name), out, resume=resume, progress=progress,
               fork=Fork(parent.resolve(), from_step, held.spec if held else None, until))
