"""Named experiment presets. Each is a full `ExperimentConfig`; the CLI's `--steps/--seed` and a
notebook's `.replace(...)` adjust them. The core presets are here; each model organism registers
its own (`register_preset`) from its package."""

from __future__ import annotations

from collections.abc import Callable

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

# Natural text (docs/natural-phase-change.md): the ladder's best rung on pure text (B-ctx256-code-lr3)
# with shortformer positions (issue #26). MLP and LayerNorm let a previous-token head form at this
# width; Python source at context 256 offers ~3.7x the induction targets of prose at context 64; lr
# 3e-3 made one layer-1 head take the whole job. Positions enter queries and keys only (after the
# norm), so the previous-token head is purely positional (0.97 on random tokens, against 0.65 with
# learned positions in the residual stream, whose share of each normalised vector varies with the
# token) and the induction head it feeds passes #10's rule. 24k steps = 24.6M tokens in bf16,
# compiled: ~13 min alone on 2 cores.
_NATURAL_MODEL = dict(
    n_layers=2, d_model=128, n_heads=4, d_vocab=512, n_ctx=256, d_mlp=512,
    positional="shortformer", normalization="layernorm", bias=True,
)
_NATURAL_DATA = dict(kind="text", corpus="code", tokenizer="bpe")
_NATURAL_TRAIN = dict(steps=24000, batch_size=4, lr=3e-3, warmup_steps=500, schedule="constant", log_every=50,
                      dtype="bf16", compile=True)
# The boosted preset (decision 21): the wave-2 natural model (learned positions, fp32, as its
# measured negative result) on text in which every training window repeats 3 spans of its own text
# (`DataConfig.boost`); always measured on un-boosted validation text. Half the windows with one
# span each added ~3% induction targets to code's ~24% and did not speed it up.
_BOOST_MODEL = dict(_NATURAL_MODEL, positional="learned")
_BOOST_DATA = dict(**_NATURAL_DATA, boost=1.0)
_BOOST_TRAIN = dict(steps=8000, batch_size=4, lr=3e-3, warmup_steps=500, schedule="constant", log_every=50)

_PRESETS: dict[str, tuple[str, dict | Callable[[], dict]]] = {
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
        "2-layer transformer (MLP, LayerNorm, shortformer positions) on Python source, BPE 512, context 256; ~13 min on 2 cores",
        dict(name="natural-2l", model=_NATURAL_MODEL, data=_NATURAL_DATA, train=_NATURAL_TRAIN),
    ),
    "natural-1l": (
        "1-layer control on the same text: cannot form an induction head",
        dict(name="natural-1l", model={**_NATURAL_MODEL, "n_layers": 1}, data=_NATURAL_DATA, train=_NATURAL_TRAIN),
    ),
    "natural-boost-2l": (
        "natural-2l on BOOSTED text (every window repeats 3 spans of its own text); measured on un-boosted text",
        dict(name="natural-boost-2l", model=_BOOST_MODEL, data=_BOOST_DATA, train=_BOOST_TRAIN),
    ),
}


def register_preset(name: str, description: str, spec: dict | Callable[[], dict]) -> None:
    """Add a named preset: a model organism's (`icl_lab.organisms`) presets register themselves.
    `spec` is the `ExperimentConfig` data, or a function that builds it on demand (when it needs
    work, such as building a task to size the vocabulary).

    Raises:
        ConfigError: the name is taken by another preset.
    """
    if name in _PRESETS and _PRESETS[name][1] is not spec:
        raise ConfigError(f"preset {name!r} is registered twice; choose another name")
    _PRESETS[name] = (description, spec)


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
    spec = _PRESETS[name][1]
    return ExperimentConfig.parse(spec() if callable(spec) else spec, where=f"preset {name}")
