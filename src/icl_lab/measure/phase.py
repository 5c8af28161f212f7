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
plateau followed by a drop is the non-convexity that marks the phase change.

Every search starts after the learning-rate warm-up and the first 1% of the run's tokens
(`search_start`, decision 25): what the loss does while the rate ramps up is not the phase change.
A phase change is *detected* when both windows exist and the shorter lies at least half inside
the other (`window_overlap` >= MIN_WINDOW_OVERLAP, the reproduction's own check), and its edges
carry 95% bootstrap intervals from resampling the evaluation examples (`edge_intervals`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MIN_PM_RISE = 0.3  # best prefix-matching score must rise by this much (score units)
MIN_ICL_DROP = 0.2  # ICL score must fall by this much (nats)
MIN_BUMP = 0.05  # loss must rise this far above its convex hull (nats)
PERSIST = 2  # a window edge is a crossing that the next PERSIST checkpoints keep
MIN_WINDOW_OVERLAP = 0.5  # the shorter window at least half inside the other (decision 25)
SEARCH_AFTER_SHARE = 0.01  # and the search starts after this share of the run's tokens, or the warm-up if later


def search_start(tokens_per_step: int, warmup_steps: int, total_steps: int) -> float:
    """Tokens after which phase changes are sought: the end of the learning-rate warm-up or the
    first 1% of the run, whichever is later."""
    return float(tokens_per_step * max(warmup_steps, SEARCH_AFTER_SHARE * total_steps))


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


def window_overlap(a: Window, b: Window) -> float:
    """How much of the shorter window the other covers, on a log-token axis (1: one lies inside
    the other; a zero-length window counts as one thousandth of a decade)."""
    eps = np.log(10) / 1000
    spans = [(np.log(w.start_tokens), max(np.log(w.end_tokens), np.log(w.start_tokens) + eps)) for w in (a, b)]
    inter = min(e for _, e in spans) - max(st for st, _ in spans)
    return float(max(0.0, inter) / min(e - st for st, e in spans))


def overlap(*windows: Window) -> float:
    """Length of the windows' intersection over the length of their union, on a log-token axis
    (a zero-length window counts as one thousandth of a decade)."""
    eps = np.log(10) / 1000
    starts = [np.log(w.start_tokens) for w in windows]
    ends = [max(np.log(w.end_tokens), np.log(w.start_tokens) + eps) for w in windows]
    inter = min(ends) - max(starts)
    return float(max(0.0, inter) / (max(ends) - min(starts)))


def detect_phase_change(tokens: np.ndarray, icl_scores: np.ndarray, best_prefix_matching: np.ndarray, loss: np.ndarray,
                        search_from: float = 0.0, resamples: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Detect the phase change from per-checkpoint series (checkpoints with tokens > 0).

    Args:
        search_from: tokens before which nothing is sought (`search_start`).
        resamples: optional ([resample, checkpoint] ICL scores, [resample, checkpoint] best
            prefix-matching scores) from resampled evaluation examples, for the edges' intervals.

    Returns the summary's `phase_change` record: `detected` (both windows exist and
    `window_overlap` >= MIN_WINDOW_OVERLAP), `start_tokens`/`end_tokens` (the union of the two
    windows) with `start_ci`/`end_ci`, `loss_bump` (`{start_tokens, end_tokens, height, covers}`
    or None; `covers` is the share of the phase window the bump covers), `window_overlap`,
    `overlap` (intersection over union), `coincide` (detected and the bump overlaps the window),
    the two windows, `search_from_tokens` and `detected_share` (of the resamples).
    """
    keep = tokens > search_from
    tokens, icl_scores, best_prefix_matching, loss = tokens[keep], icl_scores[keep], best_prefix_matching[keep], loss[keep]
    icl, pm, shared = _windows(tokens, icl_scores, best_prefix_matching)
    detected = shared is not None
    bump = loss_bump(tokens, loss) if len(tokens) >= 3 else None
    bump_record = None
    if bump is not None:
        bump_record = {**asdict(bump[0]), "height": bump[1], "covers": covered_fraction(shared, bump[0]) if detected else None}
    intervals = edge_intervals(tokens, resamples[0][:, keep], resamples[1][:, keep]) if resamples is not None else {}
    return {
        "detected": bool(detected),
        "start_tokens": shared.start_tokens if detected else None,
        "end_tokens": shared.end_tokens if detected else None,
        "start_ci": intervals.get("start_ci"), "end_ci": intervals.get("end_ci"), "detected_share": intervals.get("detected_share"),
        "loss_bump": bump_record,
        "window_overlap": window_overlap(icl, pm) if icl is not None and pm is not None else None,
        "overlap": overlap(icl, pm) if icl is not None and pm is not None else None,
        "coincide": bool(detected and bump_record is not None and bump_record["covers"] > 0),
        "icl_window": asdict(icl) if icl else None,
        "prefix_matching_window": asdict(pm) if pm else None,
        "search_from_tokens": float(search_from),
        "rule": f"ICL fall >= {MIN_ICL_DROP} nats and best prefix-matching rise >= {MIN_PM_RISE}, 10-90% windows "
                f"after {search_from:.0f} tokens, the shorter at least {MIN_WINDOW_OVERLAP:g} inside the other",
    }


def _windows(tokens: np.ndarray, icl_scores: np.ndarray, pm: np.ndarray) -> tuple[Window | None, Window | None, Window | None]:
    """(ICL window, prefix-matching window, their union if they make a detection)."""
    if len(tokens) < 3:
        return None, None, None
    icl = transition_window(tokens, icl_scores, MIN_ICL_DROP, direction=-1)
    rise = transition_window(tokens, pm, MIN_PM_RISE, direction=+1)
    if icl is None or rise is None or window_overlap(icl, rise) < MIN_WINDOW_OVERLAP:
        return icl, rise, None
    return icl, rise, Window(min(icl.start_tokens, rise.start_tokens), max(icl.end_tokens, rise.end_tokens))


def edge_intervals(tokens: np.ndarray, icl_resamples: np.ndarray, pm_resamples: np.ndarray, level: float = 0.95) -> dict:
    """95% intervals of the phase window's edges over resampled series ([resample, checkpoint]),
    and the share of resamples in which a phase change is detected at all."""
    found = [w for w in (_windows(tokens, i, p)[2] for i, p in zip(icl_resamples, pm_resamples)) if w is not None]
    out = {"detected_share": len(found) / max(1, len(icl_resamples))}
    if found:
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        out["start_ci"] = [float(v) for v in np.percentile([w.start_tokens for w in found], q)]
        out["end_ci"] = [float(v) for v in np.percentile([w.end_tokens for w in found], q)]
    return out


def covered_fraction(window: Window, other: Window) -> float:
    """The share of `window` (on a log-token axis) that `other` covers."""
    eps = np.log(10) / 1000
    lo, hi = np.log(window.start_tokens), max(np.log(window.end_tokens), np.log(window.start_tokens) + eps)
    inter = min(hi, np.log(other.end_tokens)) - max(lo, np.log(other.start_tokens))
    return float(max(0.0, inter) / (hi - lo))
