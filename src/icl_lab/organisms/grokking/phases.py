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
- memorisation ends where the excluded loss is lowest before it first rises `MIN_RISE` decades
  above its running minimum, or, if later, where the training set is memorised (train accuracy
  >= 99%: in some seeds the final circuit already carries part of the fit, so the excluded loss
  turns up before memorisation is done);
- cleanup is where the weights are cleaned up fastest: the fall rate of log(sum of squared weights)
  per step, once memorisation has ended and the excluded loss has risen `MIN_RISE` (the circuit is
  forming: a cleanup follows it), is at least half its peak (from the last checkpoint below half
  before the peak to the first persistent one after it). Without the second condition a brief dip
  of the weights right after memorisation, dense in log-spaced checkpoints, was read as the
  cleanup and no phase was found (seed 1 of the preset, issue #27);
- circuit formation runs from the end of memorisation to where the excluded loss has made 90% of
  its rise (persistently), the rise measured up to the start of that fast fall; cleanup starts there.

Every rule reads training-side quantities only (train accuracy, the excluded loss on the training
pairs, the weights) and none reads the end of the run (decision 27), so a longer run does not move
the phases, and where the test loss's drop falls among them, and whether the restricted loss starts
falling before it (the paper's central claim), are findings rather than definitions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from icl_lab.measure.phase import persistent_crossing

MIN_DROP = 1.0  # decades a loss must fall to count as a drop
MIN_RISE = 0.5  # decades the excluded loss must rise for circuit formation to count
MEMORISED = 0.99  # train accuracy at which the training set counts as memorised
RATE_SHARE = 0.5  # cleanup: where the weights' fall rate is at least this share of its peak
RULE = ("losses on log10; a drop runs from the loss's peak to its final value (start/mid/end: first persistent 10%/50%/90% "
        f"crossings, at least {MIN_DROP:g} decade); memorisation ends where the excluded loss is lowest before it first rises "
        f"{MIN_RISE:g} decade or, if later, at train accuracy >= 99%; cleanup is where the fall rate of log(sum of squared "
        f"weights) is at least {RATE_SHARE:g} of its peak; circuit formation ends when the excluded loss's rise up to the "
        "cleanup is 90% done; the restricted loss falls before the test loss when its drop starts first")


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
    """The phases of a run from its measure table (`icl_lab.organisms.grokking.results.grokking_table`).

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
    phases: dict = {"memorisation": None, "circuit_formation": None, "cleanup": None, **_training_phases(wide)}
    for name, d in (("test_loss_drop", test), ("restricted_loss_drop", restricted)):
        phases[name] = None if d is None else {**d, "phase_start": _phase_of(d["start"], phases), "phase_end": _phase_of(d["end"], phases)}
    phases["restricted_before_test"] = bool(test and restricted and restricted["start"] < test["start"])
    phases["rule"] = RULE
    return phases


def _training_phases(wide: pd.DataFrame) -> dict:
    """Memorisation, circuit formation and cleanup from the train accuracy, the excluded loss and
    the weights ({} when the excluded loss never rises or the weights never fall)."""
    steps, excluded = wide.step.to_numpy(), _log(wide.excluded_loss.to_numpy())
    found = _minimum_before_rise(excluded)
    if found is None:
        return {}
    low, risen = found
    memorised = persistent_crossing(wide.train_accuracy.to_numpy(), MEMORISED) if "train_accuracy" in wide else 0
    end_mem = max(low, memorised)
    fast = _fastest_fall(steps, np.log(wide.sum_squared_weights.to_numpy().astype(float)), max(end_mem, risen))
    if fast is None:
        return {}
    top = end_mem + int(np.argmax(excluded[end_mem : fast[0] + 1]))
    rise = excluded[top] - excluded[low]
    if rise < MIN_RISE:
        return {}
    formed = low + persistent_crossing((excluded[low : top + 1] - excluded[low]) / rise, 0.9)
    t1, t2 = int(steps[min(end_mem, formed)]), int(steps[max(formed, end_mem)])
    return {"memorisation": {"start": int(steps[0]), "end": t1}, "circuit_formation": {"start": t1, "end": t2},
            "cleanup": {"start": t2, "end": int(steps[max(fast[1], max(formed, end_mem))])}}


def _minimum_before_rise(y: np.ndarray) -> tuple[int, int] | None:
    """(the index of the running minimum, the first checkpoint MIN_RISE above it), None if never."""
    low = 0
    for i in range(len(y)):
        if y[i] < y[low]:
            low = i
        elif y[i] - y[low] >= MIN_RISE:
            return low, i
    return None


def _fastest_fall(steps: np.ndarray, log_w: np.ndarray, after: int) -> tuple[int, int] | None:
    """(start, end) indices of the stretch after `after` where log_w falls at least RATE_SHARE of
    its fastest rate per step (central differences), or None if it never falls."""
    rate = -np.gradient(log_w, steps.astype(float))
    rate[: after + 1] = -np.inf
    peak = int(np.argmax(rate))
    if not np.isfinite(rate[peak]) or rate[peak] <= 0:
        return None
    level = RATE_SHARE * rate[peak]
    start = peak
    while start > after + 1 and rate[start - 1] >= level:
        start -= 1
    below = rate[peak:] < level
    end = peak + persistent_crossing(below.astype(float), 1.0) if below.any() else len(rate) - 1
    return start, end
