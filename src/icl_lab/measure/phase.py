"""Automatic phase-change detection over a run's checkpoints, after Olsson et al. (2022),
"In-context Learning and Induction Heads", Argument 1: the ICL score, the induction heads'
prefix-matching scores and a bump in the loss curve all change in the same narrow window.

Windows are found on a log-token axis. A *transition window* is a series' 10%-90% rise (or fall)
window: from the first checkpoint where it has made 10% of its total change to the first where it
has made 90%, each a crossing that the next two checkpoints keep (so one noisy checkpoint cannot
move the window). A series whose total change is
below a threshold has no window, so a run without a phase change (the 1-layer control) reports
none instead of inventing one. The *loss bump* is where the loss, plotted against log tokens,
rises above its lower convex hull: a smoothly improving loss is convex on that axis, and a
plateau followed by a drop is the non-convexity that marks the phase change."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_PM_RISE = 0.3  # best prefix-matching score must rise by this much (score units)
MIN_ICL_DROP = 0.2  # ICL score must fall by this much (nats)
MIN_BUMP = 0.05  # loss must rise this far above its convex hull (nats)
PERSIST = 2  # a window edge is a crossing that the next PERSIST checkpoints keep


@dataclass(frozen=True)
class Window:
    start_tokens: float
    end_tokens: float


def transition_window(tokens: np.ndarray, values: np.ndarray, min_change: float, direction: int) -> Window | None:
    """The 10%-90% window of a series' change in `direction` (+1 rise, -1 fall), or None if it
    changes by less than `min_change`. `tokens` must be positive and ascending."""
    k = max(1, min(3, len(values) // 10))
    initial, final = np.median(values[:k]), np.median(values[-k:])
    change = final - initial
    if direction * change < min_change:
        return None
    progress = (values - initial) / change
    start = persistent_crossing(progress, 0.1)
    end = persistent_crossing(progress, 0.9)
    return Window(float(tokens[start]), float(tokens[max(start, end)]))


def persistent_crossing(progress: np.ndarray, level: float, keep: int = PERSIST) -> int:
    """The first index where `progress` reaches `level` and the next `keep` checkpoints stay there
    (fewer at the end of the series), so one noisy checkpoint cannot move a window's edge. The
    series' end always qualifies (its median defines 100%)."""
    above = progress >= level
    for i in range(len(progress)):
        if above[i : i + keep + 1].all():
            return i
    return len(progress) - 1


def lower_convex_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The lower convex hull of the points (x, y), evaluated at x (x ascending)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> i
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(x, x[hull], y[hull])


def loss_bump(tokens: np.ndarray, loss: np.ndarray, min_height: float = MIN_BUMP) -> tuple[Window, float] | None:
    """The region where the loss rises above its lower convex hull on a log-token axis: the
    contiguous run of checkpoints around the largest gap where the gap is at least half of it.
    Returns (window, height in nats), or None if the largest gap is below `min_height`."""
    x = np.log(tokens)
    gap = loss - lower_convex_hull(x, loss)
    peak = int(np.argmax(gap))
    if gap[peak] < min_height:
        return None
    lo = hi = peak
    while lo > 0 and gap[lo - 1] >= gap[peak] / 2:
        lo -= 1
    while hi < len(gap) - 1 and gap[hi + 1] >= gap[peak] / 2:
        hi += 1
    return Window(float(tokens[lo]), float(tokens[hi])), float(gap[peak])


def overlap(*windows: Window) -> float:
    """Length of the windows' intersection over the length of their union, on a log-token axis
    (a zero-length window counts as one thousandth of a decade)."""
    eps = np.log(10) / 1000
    starts = [np.log(w.start_tokens) for w in windows]
    ends = [max(np.log(w.end_tokens), np.log(w.start_tokens) + eps) for w in windows]
    inter = min(ends) - max(starts)
    return float(max(0.0, inter) / (max(ends) - min(starts)))


def detect_phase_change(tokens: np.ndarray, icl_scores: np.ndarray, best_prefix_matching: np.ndarray, loss: np.ndarray) -> dict:
    """Detect the phase change from per-checkpoint series (checkpoints with tokens > 0).

    Returns the summary's `phase_change` record: `detected` (the ICL-score fall and the
    prefix-matching rise both exist and overlap), `start_tokens`/`end_tokens` (the union of those
    two windows), `loss_bump` (`{start_tokens, end_tokens, height, covers}` or None; `covers` is
    the share of the phase window the bump covers), `overlap` (intersection over union of the ICL
    and prefix-matching windows), `coincide` (a phase change was detected and the loss bump
    overlaps its window) and the two windows.
    """
    icl = transition_window(tokens, icl_scores, MIN_ICL_DROP, direction=-1)
    pm = transition_window(tokens, best_prefix_matching, MIN_PM_RISE, direction=+1)
    bump = loss_bump(tokens, loss)
    detected = icl is not None and pm is not None and overlap(icl, pm) > 0
    window = Window(min(icl.start_tokens, pm.start_tokens), max(icl.end_tokens, pm.end_tokens)) if detected else None
    bump_record = None
    if bump is not None:
        bump_record = {**asdict(bump[0]), "height": bump[1],
                       "covers": covered_fraction(window, bump[0]) if window else None}
    return {
        "detected": bool(detected),
        "start_tokens": window.start_tokens if window else None,
        "end_tokens": window.end_tokens if window else None,
        "loss_bump": bump_record,
        "overlap": overlap(icl, pm) if icl is not None and pm is not None else None,
        "coincide": bool(detected and bump_record is not None and bump_record["covers"] > 0),
        "icl_window": asdict(icl) if icl else None,
        "prefix_matching_window": asdict(pm) if pm else None,
    }


def covered_fraction(window: Window, other: Window) -> float:
    """The share of `window` (on a log-token axis) that `other` covers."""
    eps = np.log(10) / 1000
    lo, hi = np.log(window.start_tokens), max(np.log(window.end_tokens), np.log(window.start_tokens) + eps)
    inter = min(hi, np.log(other.end_tokens)) - max(lo, np.log(other.start_tokens))
    return float(max(0.0, inter) / (hi - lo))
