"""Named experiment presets. Each is a full `ExperimentConfig`; the CLI's `--steps/--seed` and a
notebook's `.replace(...)` adjust them."""

from __future__ import annotations

from icl_lab.errors import ConfigError
from icl_lab.train.config import ExperimentConfig

# Attention-only, no LayerNorm, as Olsson et al.'s small models. Learned absolute positions: with
# shortformer positions this size reached prefix matching 0.18 by step 3000 (docs/benchmarks.md).
# Measured: the phase change at ~300-500 steps (~3 s), prefix matching ~0.8 after it.
_SYNTHETIC_MODEL = dict(
    n_layers=2, d_model=64, n_heads=1, d_vocab=128, n_ctx=64, d_mlp=0,
    positional="learned", normalization="none", bias=False,
)
_SYNTHETIC_TRAIN = dict(steps=1500, batch_size=32, lr=3e-3, warmup_steps=30, schedule="constant")

# Natural text (docs/natural-phase-change.md): the best configuration of the search, sized to
# ~15 minutes on 2 CPU cores (~180k tokens/s alone: 80,000 steps, 164M tokens). No LayerNorm: with it, this width formed no induction
# head even on synthetic data at vocab 512. The technical corpus has twice the literary one's
# share of targets an induction head predicts (13% against 7% of tokens at context 128).
_NATURAL_MODEL = dict(
    n_layers=2, d_model=64, n_heads=4, d_vocab=512, n_ctx=64, d_mlp=0,
    positional="learned", normalization="none", bias=False,
)
_NATURAL_DATA = dict(kind="text", corpus="technical", tokenizer="bpe")
_NATURAL_TRAIN = dict(steps=80000, batch_size=32, lr=3e-3, warmup_steps=30, schedule="constant", log_every=50)

_PRESETS: dict[str, tuple[str, dict]] = {
    "synthetic-2l": (
        "2-layer attention-only model on repeated random segments: forms induction heads (the phase change)",
        dict(name="synthetic-2l", model=_SYNTHETIC_MODEL, train=_SYNTHETIC_TRAIN),
    ),
    "synthetic-1l": (
        "1-layer control on the same data: cannot form an induction head",
        dict(name="synthetic-1l", model={**_SYNTHETIC_MODEL, "n_layers": 1}, train=_SYNTHETIC_TRAIN),
    ),
    "synthetic-smeared-1l": (
        "1-layer model with smeared keys: one layer suffices for an induction head",
        dict(name="synthetic-smeared-1l", model={**_SYNTHETIC_MODEL, "n_layers": 1, "smeared_key": True},
             train=_SYNTHETIC_TRAIN),
    ),
    "synthetic-uniform-2l": (
        "2-layer model on uniform random tokens: the no-ICL data control",
        dict(name="synthetic-uniform-2l", model=_SYNTHETIC_MODEL, data={"kind": "uniform"}, train=_SYNTHETIC_TRAIN),
    ),
    "natural-2l": (
        "2-layer attention-only model on technical prose (BPE 512), ~15 min on 2 cores; forms no induction head in that time",
        dict(name="natural-2l", model=_NATURAL_MODEL, data=_NATURAL_DATA, train=_NATURAL_TRAIN),
    ),
    "natural-1l": (
        "1-layer control on the same text: cannot form an induction head",
        dict(name="natural-1l", model={**_NATURAL_MODEL, "n_layers": 1}, data=_NATURAL_DATA, train=_NATURAL_TRAIN),
    ),
}


def preset_names() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: desc for name, (desc, _) in _PRESETS.items()}


def get_preset(name: str) -> ExperimentConfig:
    """The `ExperimentConfig` of a named preset.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(_PRESETS)} (see `icl-lab presets`)")
    return ExperimentConfig.parse(_PRESETS[name][1], where=f"preset {name}")
