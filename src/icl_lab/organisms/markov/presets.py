"""The Markov-chain preset, `markov-2l`, registered with `icl_lab.train.presets`."""

from __future__ import annotations

from icl_lab.train.presets import register_preset

# Edelman et al. (2024) train 2-layer attention-only transformers with one head per layer on chains
# over 3 states: the smallest model that can hold a statistical induction head (a previous-token
# head in layer 0, a head in layer 1 attending to the followers of the current token). Sized to
# show uniform -> unigram -> bigram in a few minutes on 2 cores: 64 positions (about 21 transitions
# out of each state, enough for the bigram counts to beat the unigram ones), width 32, as the
# synthetic presets (no norm, no biases, learned positions, constant lr after a short warm-up).
# Many checkpoints early, on a log axis, so the short unigram stage has several.
_MARKOV_MODEL = dict(n_layers=2, d_model=32, n_heads=1, d_vocab=3, n_ctx=64, d_mlp=0, positional="learned",
                     normalization="none", bias=False)
_MARKOV_TRAIN = dict(steps=4000, batch_size=64, lr=1e-3, warmup_steps=50, schedule="constant", n_checkpoints=80, log_every=20)


def register_presets() -> None:
    """Register `markov-2l`."""
    register_preset(
        "markov-2l",
        "2-layer attention-only model on in-context Markov chains (3 states): uniform -> unigram -> bigram stages (Edelman et al. 2024)",
        dict(name="markov-2l", model=_MARKOV_MODEL, data={"kind": "markov", "markov": {"n_states": 3, "alpha": 1.0}},
             train=_MARKOV_TRAIN),
    )
