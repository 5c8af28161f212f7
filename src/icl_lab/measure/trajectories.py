"""Training trajectories of several runs in one per-token-loss PCA space, computed without
rewriting any run's analysis (`analyze` stores the PCA of the runs it analysed together; this
answers for any set of runs, e.g. a whole model family)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from icl_lab.errors import ConfigError
from icl_lab.measure.evalset import make_eval_set
from icl_lab.measure.losses import per_token_losses
from icl_lab.measure.pca import joint_pca
from icl_lab.model.transformer import Transformer
from icl_lab.run.rundir import Run
from icl_lab.train.checkpoint import load_weights_into


@torch.inference_mode()
def loss_trajectories(runs: Sequence[Run], n_examples: int = 256) -> tuple[pd.DataFrame, np.ndarray]:
    """Every checkpoint of `runs` projected on the top two principal components of their
    per-token-loss vectors, on the evaluation set they share (one PCA space needs one set of
    tokens; each run's set comes from its own data, so the order of `runs` does not matter).

    Returns:
        A DataFrame with run, step, tokens, pca_1 and pca_2; and the explained-variance ratios [2].

    Raises:
        ConfigError: runs whose data give different evaluation sets (no shared space exists).
    """
    sets = {run.path.name: make_eval_set(run, n_examples) for run in runs}
    ev = sets[runs[0].path.name]
    differ = [name for name, s in sets.items() if s.fingerprint != ev.fingerprint]
    if differ:
        raise ConfigError(f"{', '.join(differ)} evaluate on other data than {runs[0].path.name}, so their per-token losses "
                          "share no PCA space; compare runs trained on the same data")
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
