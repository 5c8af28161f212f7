"""Bootstrap intervals against the normal-theory answer, and the rules built on them."""

import math

import numpy as np
import pytest
import torch

from icl_lab.measure.intervals import is_noise, mean_interval, removed_fraction_interval, resample_weights


def test_a_mean_interval_matches_the_normal_theory_width():
    x = torch.randn(400, generator=torch.Generator().manual_seed(0)) * 2.0 + 1.0
    lo, hi = mean_interval(x)
    half = 1.96 * float(x.std()) / math.sqrt(len(x))
    assert float(lo) < float(x.mean()) < float(hi)
    assert (float(hi) - float(lo)) / 2 == pytest.approx(half, rel=0.1)


def test_intervals_are_per_feature_and_deterministic():
    x = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(1))
    x[:, 1, 2] = 5.0  # a constant feature has a zero-width interval
    lo, hi = mean_interval(x)
    assert lo.shape == (2, 3) and lo[1, 2] == pytest.approx(5.0) and hi[1, 2] == pytest.approx(5.0)
    lo2, hi2 = mean_interval(x)
    assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2)


def test_resample_weights_are_draws_with_replacement():
    w = resample_weights(10)
    assert torch.allclose(w.sum(1), torch.ones(len(w), dtype=w.dtype)) and (w * 10 % 1 == 0).all()


def test_removed_fraction_interval_brackets_the_ratio_and_shares_resamples():
    gen = torch.Generator().manual_seed(2)
    clean = -2.0 + 0.3 * torch.randn(200, generator=gen)
    ablated = torch.stack([clean * 0.1, clean * 1.0], dim=1)  # removes 90%, and nothing
    lo, hi = removed_fraction_interval(clean, ablated)
    assert lo[0] == pytest.approx(0.9, abs=1e-6) and hi[0] == pytest.approx(0.9, abs=1e-6)  # exact: shared resamples
    assert lo[1] == pytest.approx(0.0, abs=1e-6)


def test_noise_means_the_interval_reaches_zero():
    assert is_noise(-0.1, 0.05) and is_noise(0.1, 0.2) and not is_noise(-0.3, -0.01)
