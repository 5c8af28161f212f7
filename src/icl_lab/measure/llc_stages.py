"""Developmental stages from the LLC curve, after Hoogland et al. (2024), "Loss Landscape Degeneracy
and Stagewise Development in Transformers": stage boundaries are the critical points of the LLC
over log-training-time, where it stops rising or falling, or starts or ends a plateau.

The procedure, on a log10-token axis:
1. smooth the LLC with a Gaussian kernel (`bandwidth` decades), evaluated on a fine uniform grid;
2. take its slope per decade, as a share of the curve's whole range;
3. call each grid point rising, falling or flat (|slope| below `flat`), and merge neighbours of a
   kind into stages; a stage narrower than `min_width` decades joins its longer neighbour;
4. a boundary is where one stage ends and the next starts.

`compare_stages` then sets the stages beside the paper's own measurements: the previous-token and
prefix-matching scores' 10%-90% rise windows (`icl_lab.measure.phase.transition_window`) and the
phase window, and reports the LLC's direction in each rise window: Hoogland et al.'s two-part bump is
the LLC falling while previous-token heads form and rising while the induction circuit completes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from icl_lab.measure.phase import MIN_PM_RISE, Window, transition_window

BANDWIDTH = 0.08  # decades of training tokens
FLAT = 0.15  # |slope| per decade below this share of the LLC's range is a plateau
MIN_WIDTH = 0.1  # decades: a narrower stage merges into its neighbour
MIN_PREV_RISE = 0.3  # the best previous-token score must rise this much to have a window
GRID = 400


@dataclass(frozen=True)
class Stage:
    start_tokens: float
    end_tokens: float
    direction: str  # "rising", "falling" or "flat"
    llc_start: float
    llc_end: float


def smooth(x: np.ndarray, y: np.ndarray, at: np.ndarray, bandwidth: float = BANDWIDTH) -> np.ndarray:
    """Nadaraya-Watson Gaussian kernel regression of y(x), evaluated at `at`."""
    w = np.exp(-0.5 * ((at[:, None] - x[None, :]) / bandwidth) ** 2)  # [at, x]
    return (w @ y) / np.maximum(w.sum(axis=1), 1e-300)


def llc_stages(tokens: np.ndarray, llc: np.ndarray, bandwidth: float = BANDWIDTH, flat: float = FLAT,
               min_width: float = MIN_WIDTH) -> list[Stage]:
    """The stages of an LLC curve (module docstring). Checkpoints at 0 tokens are left out (log axis).

    Returns:
        Stages in order, covering the first to the last positive-token checkpoint; [] for fewer than 4.
    """
    keep = (np.asarray(tokens) > 0) & np.isfinite(llc)
    x, y = np.log10(np.asarray(tokens, float)[keep]), np.asarray(llc, float)[keep]
    if len(x) < 4:
        return []
    grid = np.linspace(x.min(), x.max(), GRID)
    curve = smooth(x, y, grid, bandwidth)
    span = max(float(np.ptp(curve)), 1e-12)
    slope = np.gradient(curve, grid) / span
    kind = np.where(slope > flat, 1, np.where(slope < -flat, -1, 0))
    runs = _runs(kind)
    runs = _merge_narrow(runs, grid, min_width)
    names = {1: "rising", -1: "falling", 0: "flat"}
    return [Stage(float(10 ** grid[a]), float(10 ** grid[b]), names[k], float(curve[a]), float(curve[b])) for a, b, k in runs]


def _runs(kind: np.ndarray) -> list[tuple[int, int, int]]:
    """(start index, end index, kind) of each maximal run of equal kinds; neighbours share an edge."""
    edges = [0, *(i for i in range(1, len(kind)) if kind[i] != kind[i - 1]), len(kind) - 1]
    return [(edges[j], edges[j + 1], int(kind[edges[j]])) for j in range(len(edges) - 1)]


def _merge_narrow(runs: list[tuple[int, int, int]], grid: np.ndarray, min_width: float) -> list[tuple[int, int, int]]:
    """Merge the narrowest too-narrow stage into its wider neighbour until none is left; then fuse
    neighbours of the same kind."""
    runs = list(runs)
    while len(runs) > 1:
        widths = [grid[b] - grid[a] for a, b, _ in runs]
        i = int(np.argmin(widths))
        if widths[i] >= min_width:
            break
        j = i - 1 if i == len(runs) - 1 or (i > 0 and widths[i - 1] >= widths[i + 1]) else i + 1
        a, b = min(runs[i][0], runs[j][0]), max(runs[i][1], runs[j][1])
        runs[min(i, j)] = (a, b, runs[j][2])
        del runs[max(i, j)]
        fused = [runs[0]]
        for a2, b2, k2 in runs[1:]:
            if k2 == fused[-1][2]:
                fused[-1] = (fused[-1][0], b2, k2)
            else:
                fused.append((a2, b2, k2))
        runs = fused
    return runs


def direction_in(window: Window | None, tokens: np.ndarray, llc: np.ndarray, bandwidth: float = BANDWIDTH) -> dict | None:
    """How the smoothed LLC changes across `window`: its values at the edges and "rising" /
    "falling" / "flat" (a change under FLAT x the curve's range per decade of window)."""
    if window is None:
        return None
    keep = (np.asarray(tokens) > 0) & np.isfinite(llc)
    x, y = np.log10(np.asarray(tokens, float)[keep]), np.asarray(llc, float)[keep]
    if len(x) < 2:
        return None
    edges = np.log10([window.start_tokens, max(window.end_tokens, window.start_tokens)])
    a, b = smooth(x, y, edges, bandwidth)
    grid = np.linspace(x.min(), x.max(), GRID)
    span = max(float(np.ptp(smooth(x, y, grid, bandwidth))), 1e-12)
    width = max(edges[1] - edges[0], 1e-6)
    rate = (b - a) / span / width
    direction = "rising" if rate > FLAT else "falling" if rate < -FLAT else "flat"
    return {"llc_start": float(a), "llc_end": float(b), "change": float(b - a), "direction": direction}


def compare_stages(tokens: np.ndarray, llc: np.ndarray, score_tokens: np.ndarray, previous_token: np.ndarray,
                   prefix_matching: np.ndarray, phase: dict | None = None) -> dict:
    """The stages beside the score rises and the phase window.

    Args:
        tokens: [checkpoint] training tokens of the LLC estimates (ascending).
        llc: [checkpoint] LLC estimates.
        score_tokens: [checkpoint'] training tokens of the scores (every analysed checkpoint).
        previous_token, prefix_matching: [checkpoint'] best head's score at each of those checkpoints.
        phase: the run's phase-change summary (`detect_phase_change`), if analysed.

    Returns:
        {stages, boundaries, previous_token_window, prefix_matching_window, phase_window,
        llc_in_previous_token_rise, llc_in_prefix_matching_rise, previous_token_first, two_part_bump}.
    """
    tokens, llc, score_tokens = np.asarray(tokens, float), np.asarray(llc, float), np.asarray(score_tokens, float)
    stages = llc_stages(tokens, llc)
    pos = score_tokens > 0
    prev_w = _rise(score_tokens[pos], np.asarray(previous_token, float)[pos], MIN_PREV_RISE)
    pm_w = _rise(score_tokens[pos], np.asarray(prefix_matching, float)[pos], MIN_PM_RISE)
    in_prev, in_pm = direction_in(prev_w, tokens, llc), direction_in(pm_w, tokens, llc)
    first = None if prev_w is None or pm_w is None else _mid(prev_w) < _mid(pm_w)
    two_part = None if in_prev is None or in_pm is None else (
        bool(first) and in_prev["direction"] == "falling" and in_pm["direction"] == "rising")
    phase_w = None
    if phase and phase.get("detected"):
        phase_w = {"start_tokens": phase["start_tokens"], "end_tokens": phase["end_tokens"]}
    return {"stages": [asdict(s) for s in stages], "boundaries": [s.end_tokens for s in stages[:-1]],
            "previous_token_window": None if prev_w is None else asdict(prev_w),
            "prefix_matching_window": None if pm_w is None else asdict(pm_w), "phase_window": phase_w,
            "llc_in_previous_token_rise": in_prev, "llc_in_prefix_matching_rise": in_pm,
            "previous_token_first": first, "two_part_bump": two_part}


def _rise(tokens: np.ndarray, values: np.ndarray, min_change: float) -> Window | None:
    """A score's 10%-90% rise window; None without one or without the scores (NaN: not analysed)."""
    if len(values) < 4 or not np.isfinite(values).all():
        return None
    return transition_window(tokens, values, min_change, +1)


def _mid(w: Window) -> float:
    return float(np.sqrt(w.start_tokens * max(w.end_tokens, w.start_tokens)))
