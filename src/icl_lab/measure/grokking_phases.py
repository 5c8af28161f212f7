"""The three phases of grokking, found from the progress measures by fixed rules (Nanda et al.
2023, Section 5.2): *memorisation* (train and excluded loss fall together; the key frequencies are
unused), *circuit formation* (the excluded loss rises while the train loss stays low: the training
data are now fitted through the Fourier circuit), and *cleanup* (weight decay removes the
memorisation: the test loss and the weight norm fall sharply).

All rules work on log10 of the losses against checkpoints, with the project's persistent crossings
(`icl_lab.measure.phase.persistent_crossing`: a level counts once the next two checkpoints keep it):

- a loss *drop* runs from its peak to its final value; its start, middle and end are the first
  persistent crossings of 10%, 50% and 90% of that fall (in decades) after the peak. Only a fall of
  at least `MIN_DROP` decades counts.
- memorisation ends where the excluded loss is lowest before it rises (at least `MIN_RISE`
  decades) toward its plateau, or, if later, where the training set is memorised (train accuracy
  >= 99%: in some seeds the final circuit already carries part of the fit, so the excluded loss
  turns up before memorisation is done); circuit formation ends where the excluded loss has made 90% of its rise
  (persistently); cleanup ends where the total sum of squared weights has made 90% of its fall
  from there to the end of the run.

The phases come from the excluded loss and the weights alone, so where the test loss's drop falls
among them, and whether the restricted loss starts falling before it (the paper's central claim),
are findings rather than definitions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from icl_lab.measure.phase import persistent_crossing

MIN_DROP = 1.0  # decades a loss must fall to count as a drop
MIN_RISE = 0.5  # decades the excluded loss must rise for circuit formation to count
MEMORISED = 0.99  # train accuracy at which the training set counts as memorised
RULE = ("losses on log10; a drop runs from the loss's peak to its final value (start/mid/end: first persistent 10%/50%/90% "
        f"crossings, at least {MIN_DROP:g} decade); memorisation ends where the excluded loss is lowest before rising "
        f"(>= {MIN_RISE:g} decade) or, if later, at train accuracy >= 99%; circuit formation ends when that rise is 90% done; cleanup ends when the sum of squared "
        "weights has made 90% of its fall from there to the end; the restricted loss falls before the test loss when its "
        "drop starts first")


def _log(values: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(values.astype(float), 1e-300, None))


def drop(steps: np.ndarray, loss: np.ndarray, min_drop: float = MIN_DROP) -> dict | None:
    """The fall of a loss from its peak to its final value: `{start, mid, end, decades}` (steps of
    the persistent 10%, 50% and 90% crossings), or None if it falls less than `min_drop` decades."""
    y = _log(loss)
    peak = int(np.argmax(y))
    k = max(1, min(3, (len(y) - peak) // 10))
    final = float(np.median(y[-k:]))
    fall = y[peak] - final
    if fall < min_drop:
        return None
    progress = (y[peak] - y[peak:]) / fall
    at = [peak + persistent_crossing(progress, level) for level in (0.1, 0.5, 0.9)]
    return {"start": int(steps[at[0]]), "mid": int(steps[at[1]]), "end": int(steps[at[2]]), "decades": float(fall)}


def _phase_of(step: int, phases: dict) -> str | None:
    for name in ("memorisation", "circuit_formation", "cleanup"):
        ph = phases.get(name)
        if ph and ph["start"] <= step <= ph["end"]:
            return name
    return None


def find_phases(wide: pd.DataFrame) -> dict:
    """The phases of a run from its measure table (`icl_lab.run.results.grokking_table`).

    Returns:
        `{memorisation, circuit_formation, cleanup: {start, end} (steps) or None,
        test_loss_drop, restricted_loss_drop: {start, mid, end, decades, phase_start, phase_end}
        (the phases its start and end fall in) or None,
        restricted_before_test: the restricted loss's drop starts before the test loss's,
        rule: the rules in words}`.
    """
    steps = wide.step.to_numpy()
    test = drop(steps, wide.test_loss.to_numpy())
    restricted = drop(steps, wide.restricted_loss.to_numpy())
    excluded = _log(wide.excluded_loss.to_numpy())
    before = np.searchsorted(steps, test["start"], side="right") if test else len(steps)
    phases: dict = {"memorisation": None, "circuit_formation": None, "cleanup": None}
    low = int(np.argmin(excluded[:before])) if before > 0 else 0
    rise = excluded[low:].max() - excluded[low]
    if rise >= MIN_RISE:
        top = low + int(np.argmax(excluded[low:]))
        at = low + persistent_crossing((excluded[low : top + 1] - excluded[low]) / rise, 0.9)
        memorised = persistent_crossing(wide.train_accuracy.to_numpy(), MEMORISED) if "train_accuracy" in wide else 0
        t1, t2 = int(steps[min(max(low, memorised), at)]), int(steps[at])
        phases["memorisation"] = {"start": int(steps[0]), "end": t1}
        phases["circuit_formation"] = {"start": t1, "end": t2}
        w = wide.sum_squared_weights.to_numpy()[at:]
        k = max(1, min(3, len(w) // 10))
        fall = w[0] - np.median(w[-k:])
        t3 = int(steps[at + persistent_crossing((w[0] - w) / fall, 0.9)]) if fall > 0 else int(steps[-1])
        phases["cleanup"] = {"start": t2, "end": t3}
    for name, d in (("test_loss_drop", test), ("restricted_loss_drop", restricted)):
        phases[name] = None if d is None else {**d, "phase_start": _phase_of(d["start"], phases), "phase_end": _phase_of(d["end"], phases)}
    phases["restricted_before_test"] = bool(test and restricted and restricted["start"] < test["start"])
    phases["rule"] = RULE
    return phases
