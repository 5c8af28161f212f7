"""The grokking preset, `grokking-1l`, registered with `icl_lab.train.presets`."""

from __future__ import annotations

from icl_lab.train.presets import register_preset

# Grokking modular addition (docs/grokking.md), as Nanda et al. (2023): one ReLU layer, no
# LayerNorm, full-batch AdamW with weight decay 1.0 on 30% of the pairs mod 113. No biases (as
# TransformerLens's grokking replication), so weight decay reaches every parameter; no gradient
# clipping, a 10-step warm-up; a float64 log-softmax in the loss, as theirs (in float32 the
# memorised training set's loss spikes every few hundred steps and the weights stop shrinking).
_GROKKING_P, _GROKKING_FRAC = 113, 0.3
_GROKKING_MODEL = dict(n_layers=1, d_model=128, n_heads=4, d_mlp=512, d_vocab=_GROKKING_P + 1, n_ctx=4, positional="learned",
                       normalization="none", act_fn="relu", bias=False, loss_dtype="fp64")
# lr 3e-3, three times theirs: AdamW's decay timescale 1/(lr wd) sets when grokking comes, and at
# 1e-3 it came at ~14k full-batch steps (a development run), at 3e-3 at 2.0k-2.4k (3 seeds; docs/grokking.md).
_GROKKING_TRAIN = dict(steps=5000, batch_size=round(_GROKKING_FRAC * _GROKKING_P**2), lr=3e-3, warmup_steps=10, weight_decay=1.0,
                       betas=(0.9, 0.98), grad_clip=0.0, n_checkpoints=150, log_every=10)


def register_presets() -> None:
    """Register `grokking-1l`."""
    register_preset(
        "grokking-1l",
        "1-layer ReLU transformer on (a + b) mod 113, 30% of pairs, full batch, weight decay 1: groks (Nanda et al. 2023)",
        dict(name="grokking-1l", model=_GROKKING_MODEL,
             data={"kind": "modular", "modular": {"p": _GROKKING_P, "frac": _GROKKING_FRAC}}, train=_GROKKING_TRAIN),
    )
