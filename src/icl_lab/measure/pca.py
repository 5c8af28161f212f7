"""Per-token-loss vectors and their joint PCA, after Olsson et al. (2022), Argument 1: each
checkpoint's losses on a fixed set of (example, token) pairs form one vector; a PCA fitted jointly
over every checkpoint of every run puts all runs' training trajectories in one 2-D space, where
the phase change shows as a turn."""

from __future__ import annotations

import numpy as np


def joint_pca(vectors: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA of [n_checkpoints_all_runs, n_examples] per-token-loss vectors.

    Returns the projections [n, k] and the explained-variance ratios [k]. Component signs are
    fixed so the first checkpoint's coordinates are non-positive, making plots reproducible.
    """
    centred = vectors - vectors.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    proj = np.zeros((len(vectors), k))
    proj[:, : min(k, len(vt))] = centred @ vt[:k].T  # fewer checkpoints than components: the rest stay 0
    signs = np.where(proj[0] > 0, -1.0, 1.0)
    var = np.zeros(k)
    var[: min(k, len(s))] = s[:k] ** 2
    return proj * signs, (var / (s**2).sum()) if (s**2).sum() > 0 else np.zeros(k)


def before_after_vector(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The normalised difference end - start of per-token-loss vectors across the phase change."""
    diff = end - start
    norm = np.linalg.norm(diff)
    return diff / norm if norm > 0 else diff

