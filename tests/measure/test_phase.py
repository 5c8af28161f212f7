import numpy as np
import pytest

from icl_lab.measure.phase import covered_fraction, detect_phase_change, loss_bump, lower_convex_hull, overlap, transition_window, Window

TOKENS = np.logspace(3, 7, 81)  # 10^3 .. 10^7 tokens, 20 checkpoints a decade


def sigmoid_in_log(center: float, width: float = 0.1) -> np.ndarray:
    return 1 / (1 + np.exp(-(np.log10(TOKENS) - np.log10(center)) / width))


def test_transition_window_brackets_a_sharp_rise():
    y = 0.05 + 0.8 * sigmoid_in_log(1e5)
    w = transition_window(TOKENS, y, min_change=0.3, direction=+1)
    assert 10**4.7 < w.start_tokens < 1e5 < w.end_tokens < 10**5.3


def test_no_window_without_enough_change_or_in_the_wrong_direction():
    y = 0.05 + 0.1 * sigmoid_in_log(1e5)
    assert transition_window(TOKENS, y, min_change=0.3, direction=+1) is None
    assert transition_window(TOKENS, 1 - sigmoid_in_log(1e5), min_change=0.3, direction=+1) is None


def test_convex_hull_of_a_convex_curve_is_the_curve():
    x = np.linspace(0, 3, 30)
    assert np.allclose(lower_convex_hull(x, (x - 1) ** 2), (x - 1) ** 2)
    bumped = (x > 1.5) & (x < 2)
    y = (x - 1) ** 2 + np.where(bumped, 0.5, 0.0)
    hull = lower_convex_hull(x, y)
    assert np.allclose(hull[~bumped], y[~bumped]) and (hull[bumped] < y[bumped] - 0.3).all()


def test_loss_bump_finds_a_plateau_then_drop_and_not_a_smooth_power_law():
    smooth = 5 * (TOKENS / 1e3) ** -0.1  # convex in log tokens
    assert loss_bump(TOKENS, smooth) is None
    bumpy = smooth - 1.5 * sigmoid_in_log(1e5)
    window, height = loss_bump(TOKENS, bumpy)
    assert height > 0.3 and window.start_tokens < 1e5 and window.end_tokens > 10**4.9


def test_overlap_and_coverage():
    a, b = Window(1e4, 1e5), Window(10**4.5, 1e6)
    assert overlap(a, b) == pytest.approx(0.5 / 2.0)
    assert overlap(a, Window(1e6, 1e7)) == 0.0
    assert covered_fraction(a, b) == pytest.approx(0.5)


def test_coinciding_changes_are_detected():
    step = sigmoid_in_log(1e5)
    r = detect_phase_change(TOKENS, -4 * step, 0.05 + 0.8 * step, 4.8 - 3 * step - 0.1 * np.log10(TOKENS))
    assert r["detected"] and r["coincide"]
    assert r["start_tokens"] < 1e5 < r["end_tokens"]
    assert r["overlap"] > 0.8


def test_no_prefix_matching_rise_means_no_phase_change():
    step = sigmoid_in_log(1e5)
    r = detect_phase_change(TOKENS, -2 * step, 0.05 + 0.04 * step, 4.8 - 1.5 * step)
    assert not r["detected"] and r["start_tokens"] is None and r["prefix_matching_window"] is None


def test_changes_at_different_times_do_not_coincide():
    r = detect_phase_change(TOKENS, -3 * sigmoid_in_log(1e4), 0.05 + 0.8 * sigmoid_in_log(1e6), 4.8 - 0.2 * np.log10(TOKENS))
    assert not r["detected"] and r["overlap"] == 0.0


def test_one_noisy_checkpoint_cannot_move_the_window():
    y = 0.05 + 0.8 * sigmoid_in_log(1e5)
    clean = transition_window(TOKENS, y, min_change=0.3, direction=+1)
    spiked = y.copy()
    spiked[20] = 0.95  # one checkpoint at 10^4 jumps past 90% and falls back
    w = transition_window(TOKENS, spiked, min_change=0.3, direction=+1)
    assert w == clean
    # the same spike moved both edges under a running-maximum envelope: the test can fail
    envelope = np.maximum.accumulate((spiked - 0.05) / 0.8)
    assert TOKENS[int(np.argmax(envelope >= 0.1))] < clean.start_tokens / 5


def test_a_crossing_must_persist_for_two_checkpoints():
    from icl_lab.measure.phase import persistent_crossing
    progress = np.array([0.0, 0.95, 0.0, 0.0, 0.95, 0.95, 0.2, 0.95, 0.95, 0.95, 1.0])
    assert persistent_crossing(progress, 0.9) == 7
    assert persistent_crossing(np.array([0.0, 0.0, 0.0, 1.0]), 0.9) == 3  # the end qualifies


def test_a_warm_up_transient_is_not_the_phase_change():
    """Before decision 25 the search began at the first checkpoint, so a loss spike during the
    warm-up (the largest bump) was taken for the phase change's bump, and an early ICL fall set the
    window's start. With `search_from`, the bump before the window is found."""
    step = sigmoid_in_log(1e5)
    warmup = np.where(TOKENS < 10**3.4, 2.0 * np.exp(-((np.log10(TOKENS) - 3.2) / 0.1) ** 2), 0.0)  # a 2-nat spike
    loss = 4.8 - 1.5 * step - 0.1 * np.log10(TOKENS) + warmup
    icl = -2 * step - 0.5 * (TOKENS < 10**3.3)  # an early dip while the rate ramps up
    whole = detect_phase_change(TOKENS, icl, 0.05 + 0.8 * step, loss)
    assert whole["loss_bump"]["end_tokens"] < 10**3.5  # the spike wins without the rule
    after = detect_phase_change(TOKENS, icl, 0.05 + 0.8 * step, loss, search_from=10**3.5)
    assert after["detected"] and after["search_from_tokens"] == 10**3.5
    assert 10**4.5 < after["loss_bump"]["end_tokens"] and after["coincide"]
    assert after["start_tokens"] > 10**3.5


def test_detection_needs_the_shorter_window_half_inside_the_other():
    """IoU > 0 counted as detected before; now the reproduction's own overlap rule decides."""
    icl_step, pm_step = sigmoid_in_log(1e4, 0.09), sigmoid_in_log(10**4.6, 0.23)  # ~[3.8, 4.2] and ~[4.1, 5.1] decades
    r = detect_phase_change(TOKENS, -2 * icl_step, 0.05 + 0.8 * pm_step, 4.8 - 1.5 * pm_step)
    assert r["overlap"] > 0 and r["window_overlap"] < 0.5 and not r["detected"]
    same = detect_phase_change(TOKENS, -2 * pm_step, 0.05 + 0.8 * pm_step, 4.8 - 1.5 * pm_step)
    assert same["window_overlap"] == pytest.approx(1.0) and same["detected"]


def test_window_edges_get_intervals_that_cover_them_and_shrink_with_less_noise():
    rng = np.random.default_rng(0)
    step = sigmoid_in_log(1e5)
    def resamples(noise):
        return (-2 * step + noise * rng.standard_normal((200, len(TOKENS))),
                0.05 + 0.8 * step + noise * rng.standard_normal((200, len(TOKENS))))
    r = detect_phase_change(TOKENS, -2 * step, 0.05 + 0.8 * step, 4.8 - 1.5 * step, resamples=resamples(0.05))
    lo, hi = r["start_ci"]
    assert lo <= r["start_tokens"] <= hi and r["end_ci"][0] <= r["end_tokens"] <= r["end_ci"][1]
    assert r["detected_share"] > 0.9
    wide = detect_phase_change(TOKENS, -2 * step, 0.05 + 0.8 * step, 4.8 - 1.5 * step, resamples=resamples(0.3))
    assert np.log(wide["start_ci"][1] / wide["start_ci"][0]) > np.log(hi / lo)
