"""Training trajectories of several runs in one per-token-loss PCA space, computed without
rewriting any run's analysis (`analyze` stores the PCA of the runs it analysed together; this
answers for any set of runs, e.g. a whole model family)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from icl_lab.measure.evalset import make_eval_set
from icl_lab.measure.losses import per_token_losses
from icl_lab.measure.pca import joint_pca
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights_into


@torch.inference_mode()
def loss_trajectories(runs: Sequence[Run], n_examples: int = 256) -> tuple[pd.DataFrame, np.ndarray]:
    """Every checkpoint of `runs` (one vocabulary and context) projected on the top two principal
    components of their per-token-loss vectors, on the first run's fixed evaluation set.

    Returns:
        A DataFrame with run, step, tokens, pca_1 and pca_2; and the explained-variance ratios [2].
    """
    ev = make_eval_set(runs[0], n_examples)
    keys, vectors = [], []
    for run in runs:
        model = Transformer(run.config.model)
        for step in run.checkpoints:
            load_weights_into(model, run.layout.checkpoint(step))
            per_token = per_token_losses(model.eval(), ev.tokens)  # [example, pos-1]
            vectors.append(per_token[torch.arange(len(per_token)), ev.ptl_positions].numpy())
            keys.append((run.path.name, step, step * run.config.train.batch_size * run.config.model.n_ctx))
    proj, explained = joint_pca(np.stack(vectors))
    table = pd.DataFrame(keys, columns=["run", "step", "tokens"])
    table["pca_1"], table["pca_2"] = proj[:, 0], proj[:, 1]
    return table, explained
