"""Bootstrap confidence intervals over evaluation examples: how sure each measured number is.

Every interval comes from one fixed set of resampling weights (multinomial counts, seeded), so
the same examples give the same interval, and a mean and a ratio of means share resamples. The
percentile method gives a 95% interval; 1,000 resamples keep its ends stable to about 0.01
standard deviations (Efron & Tibshirani 1993, ch. 13)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from icl_lab.run.results import is_noise  # noqa: F401  (the rule lives with the stored results that use it)

N_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


@lru_cache(maxsize=16)
def resample_weights(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Tensor:
    """[resample, example] counts, each row a draw of n examples with replacement, divided by n
    (cached: every checkpoint of a run reuses the same resamples; treat it as read-only)."""
    gen = torch.Generator().manual_seed(seed + n)
    idx = torch.randint(0, n, (n_resamples, n), generator=gen)
    counts = torch.zeros(n_resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts / n


def resampled_means(per_example: Tensor) -> Tensor:
    """[resample, ...] means of `per_example [example, ...]` under the shared resampling weights,
    over the examples that have a value: a NaN example is left out of each mean (the weights are
    renormalised over the others), never counted as 0; a feature with no value stays NaN."""
    x = per_example.double().flatten(1) if per_example.ndim > 1 else per_example.double()[:, None]
    weights = resample_weights(len(per_example))
    present = (~x.isnan()).double()
    means = (weights @ x.nan_to_num()) / (weights @ present)  # [resample, features]
    return means.view(-1, *per_example.shape[1:])


def percentile_interval(samples: Tensor, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) arrays of the central `level` interval of `samples [resample, ...]`."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype)
    lo, hi = torch.quantile(samples, q, dim=0)
    return lo.numpy(), hi.numpy()


def mean_interval(per_example: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """95% bootstrap interval of the mean over examples of `per_example [example, ...]`."""
    return percentile_interval(resampled_means(per_example))


def removed_fraction_interval(clean: Tensor, ablated: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of 1 - mean(ablated) / mean(clean) over examples, where `clean [example]` and
    `ablated [example, ...]` are per-example ICL scores; both means use the same resamples."""
    c = resampled_means(clean)  # [resample]
    a = resampled_means(ablated)  # [resample, ...]
    ratio = 1 - a / c.view(-1, *([1] * (a.ndim - 1)))
    return percentile_interval(ratio)
