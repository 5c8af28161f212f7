"""Choosing the SGLD settings by a diagnostic, not by habit.

The LLC estimate depends on the step size ε, the localisation γ and the inverse temperature nβ, and
there is no setting that is right for every model. `calibrate` runs short chains for every point of
a grid at a few checkpoints spread over training (early, middle, final) and keeps the points whose
chains are healthy at all of them (`LLCEstimate.health`: no drift at the end, positive, chains in
agreement, and the chain not giving back more than half of what training gained). Among those it
prefers, in order: the theory's nβ = n / log n, the weakest localisation (γ biases the estimate
down), then the largest step (it mixes fastest). devinterp 2.0.1 has no MALA acceptance statistic,
so none is used. When no point is healthy everywhere, the point with the fewest problems is chosen
and the result says so: estimates made with it carry a warning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from icl_lab.measure.llc import SGLDSettings, llc

# nβ: per predicted token (the theory's n / log n), per sequence (devinterp's default) and a fixed 30;
# γ from weak to strong; ε over two decades (issue #27: the settings must survive a second look)
GRID = {"lr": (3e-5, 1e-4, 3e-4, 1e-3), "gamma": (100.0, 300.0, 1000.0, 3000.0), "nbeta": (None, "sequences", 30.0)}
CALIBRATION_BURNIN = 40  # steps dropped at each calibration chain's start (the base settings' own burn-in if larger)
CALIBRATION_CHAINS = 2

Progress = Callable[[int, int], None]  # (grid points x checkpoints done, total)


@dataclass(frozen=True)
class Calibration:
    """The grid, every point's diagnostics at every calibration checkpoint, and the choice.

    Attributes:
        chosen: the settings to use (the base settings with the chosen ε, γ, nβ).
        healthy: whether the chosen point was healthy at every calibration checkpoint.
        steps: the calibration checkpoints.
        rows: one dict per (point, step): lr, gamma, nbeta (resolved), step, llc, drift, spread,
            give_back, ok, problems.
    """

    chosen: SGLDSettings
    healthy: bool
    steps: list[int]
    rows: list[dict]

    def to_json(self) -> dict:
        return {"chosen": self.chosen.model_dump(), "healthy": self.healthy, "steps": self.steps, "grid": self.rows,
                "rule": "healthy at every step; prefer nbeta = n/log n per token, then per sequence, then fixed; "
                        "then the smallest gamma, then the largest lr; burn-in " + str(CALIBRATION_BURNIN)}


def calibration_steps(steps: Sequence[int], k: int = 3) -> list[int]:
    """`k` checkpoints at log-step fractions 0.5 ... 1 of training (from the first non-zero step to
    the last): the second half in log-steps, where models of this size learn their circuits."""
    nonzero = sorted(s for s in steps if s > 0)
    if len(nonzero) <= k:
        return nonzero
    logs = np.log(nonzero)
    targets = logs[0] + (logs[-1] - logs[0]) * np.linspace(0.5, 1.0, k)
    return sorted({nonzero[int(np.abs(logs - t).argmin())] for t in targets})


def calibrate(models: dict[int, torch.nn.Module], tokens: torch.Tensor, base: SGLDSettings | None = None,
              grid: dict[str, Sequence] | None = None, progress: Progress | None = None) -> Calibration:
    """Run the calibration grid (module docstring) on the models at the calibration checkpoints.

    Args:
        models: step -> the model at that checkpoint.
        tokens: [example, pos] sequences the estimates use.
        base: the other settings (draws, batch size, seed); chains are CALIBRATION_CHAINS.
        grid: {"lr": [...], "gamma": [...], "nbeta": [... or None]} (default GRID).
        progress: optional callback after each estimate.
    """
    base = base or SGLDSettings()
    grid = {**GRID, **(grid or {})}
    points = list(product(grid["nbeta"], grid["gamma"], grid["lr"]))
    rows, total = [], len(points) * len(models)
    for i, (nbeta, gamma, lr) in enumerate(points):
        s = base.replace(lr=lr, gamma=gamma, nbeta=nbeta, chains=min(base.chains, CALIBRATION_CHAINS),
                         burnin=max(base.burnin, CALIBRATION_BURNIN))
        for j, (step, model) in enumerate(sorted(models.items())):
            est = llc(model, tokens, s)
            h = est.health()
            rows.append({"lr": lr, "gamma": gamma, "nbeta": est.nbeta, "nbeta_setting": nbeta, "step": step,
                         "llc": est.value, **{k: h[k] for k in ("drift", "spread", "give_back", "ok", "problems")}})
            if progress is not None:
                progress(i * len(models) + j + 1, total)
    chosen, healthy = choose(rows)
    return Calibration(base.replace(lr=chosen["lr"], gamma=chosen["gamma"], nbeta=chosen["nbeta_setting"],
                                    burnin=max(base.burnin, CALIBRATION_BURNIN)),
                       healthy, sorted(models), rows)


def choose(rows: list[dict]) -> tuple[dict, bool]:
    """The point to use and whether it is healthy at every step (module docstring's order)."""
    points: dict[tuple, list[dict]] = {}
    for r in rows:
        points.setdefault((r["nbeta_setting"], r["gamma"], r["lr"]), []).append(r)

    def preference(key: tuple) -> tuple:
        nbeta, gamma, lr = key
        kind = 0 if nbeta is None else 1 if nbeta == "sequences" else 2  # per token, per sequence, a fixed value
        return (kind, float(nbeta) if kind == 2 else 0.0, gamma, -lr)

    healthy = [k for k, rs in points.items() if all(r["ok"] for r in rs)]
    if healthy:
        best = min(healthy, key=preference)
        return points[best][0], True
    best = min(points, key=lambda k: (sum(len(r["problems"]) for r in points[k]), preference(k)))
    return points[best][0], False
