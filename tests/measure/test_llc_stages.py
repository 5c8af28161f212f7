"""LLC stages on curves whose stages are planted: a rise, a dip, a rise and a plateau are found
where they were put, a monotone curve gives no dip, the two-part bump is reported only when the
previous-token rise comes first with the LLC falling and the induction rise has it rising."""

from __future__ import annotations

import numpy as np
import pytest

from icl_lab.measure.llc_stages import compare_stages, llc_stages

TOKENS = np.geomspace(1e4, 1e7, 80)
X = np.log10(TOKENS)


def sigmoid(x, mid, width=0.08):
    return 1 / (1 + np.exp(-(x - mid) / width))


def two_part(dip_at=5.6):
    """Rise at 10^5, a dip around 10^5.6 (falling into it, rising out of it), then a plateau."""
    return 10 + 40 * sigmoid(X, 5.0) - 15 * np.exp(-(((X - dip_at) / 0.15) ** 2))


def test_planted_stages_are_found_in_order_and_place():
    stages = llc_stages(TOKENS, two_part())
    directions = [s.direction for s in stages]
    assert directions == ["flat", "rising", "falling", "rising", "flat"]
    falling = stages[2]
    assert 10**5.3 < falling.start_tokens < 10**5.55 and 10**5.55 < falling.end_tokens < 10**5.8
    assert stages[-1].end_tokens == pytest.approx(TOKENS[-1])


def test_a_monotone_curve_has_no_falling_stage_and_noise_does_not_invent_one():
    rng = np.random.default_rng(0)
    noisy = 10 + 40 * sigmoid(X, 5.0) + rng.normal(0, 0.5, len(X))
    assert "falling" not in {s.direction for s in llc_stages(TOKENS, noisy)}


def test_two_part_bump_needs_the_previous_token_rise_first_with_the_llc_falling():
    llc = two_part()
    prev = sigmoid(X, 5.45, 0.05)  # rises as the LLC falls into the dip
    pm = sigmoid(X, 5.75, 0.05)  # rises as the LLC climbs out of it
    out = compare_stages(TOKENS, llc, TOKENS, prev, pm)
    assert out["previous_token_first"] and out["llc_in_previous_token_rise"]["direction"] == "falling"
    assert out["llc_in_prefix_matching_rise"]["direction"] == "rising" and out["two_part_bump"]
    swapped = compare_stages(TOKENS, llc, TOKENS, pm, prev)  # induction first: no two-part bump
    assert swapped["previous_token_first"] is False and swapped["two_part_bump"] is False


def test_without_scores_or_rises_the_comparison_says_none():
    llc = two_part()
    flat = np.full(len(X), 0.05)
    out = compare_stages(TOKENS, llc, TOKENS, flat, flat)
    assert out["previous_token_window"] is None and out["two_part_bump"] is None
    empty = compare_stages(TOKENS, llc, np.array([]), np.array([]), np.array([]))
    assert empty["prefix_matching_window"] is None and len(empty["stages"]) == 5
    assert llc_stages(TOKENS[:3], llc[:3]) == []
