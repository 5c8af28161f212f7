"""Learning-rate and checkpoint schedules: pure functions of the step, so a resumed run follows
exactly the same curve as an uninterrupted one."""

from __future__ import annotations

import math

import numpy as np

from icl_lab.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for the optimiser step that follows `step` completed steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":  # stable, then a linear decay over the last decay_share of the steps
        decay_start = cfg.steps * (1 - cfg.decay_share)
        if step < decay_start:
            return cfg.lr
        done = min(1.0, (step - decay_start) / max(1.0, cfg.steps - decay_start))
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * done)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def checkpoint_steps(total: int, n: int = 100) -> list[int]:
    """About `n` checkpoint steps in [0, total]: half log-spaced (dense early, where the phase
    change often happens) and half linear (even coverage late), always including 0 and `total`.

    Example:
        >>> checkpoint_steps(1000, 10)
        [0, 1, 6, 32, 178, 200, 400, 600, 800, 1000]
    """
    n_log = n // 2
    log = np.unique(np.round(np.logspace(0, np.log10(max(total, 1)), n_log)).astype(int))
    lin = np.round(np.linspace(0, total, n - len(log) + 1)).astype(int)
    steps = set(log.tolist()) | set(lin.tolist()) | {0, total}
    return sorted(s for s in steps if 0 <= s <= total)
