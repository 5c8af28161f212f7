"""Named experiment presets. Each is a full `ExperimentConfig`; the CLI's `--steps/--seed` and a
notebook's `.replace(...)` adjust them."""

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

# Out-of-context reasoning (docs/oocr.md): facts need MLP memory and LayerNorm for stable
# memorisation; answers are the only targets (Batch.loss_mask). Vocabulary and context come from
# the task itself. Weight decay is what lets held-out compositions grok (Wang et al. 2024).
_OOCR_MODEL = dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512, positional="learned", normalization="layernorm")
_OOCR_TRAIN = dict(steps=1500, batch_size=256, lr=1e-3, warmup_steps=100, weight_decay=0.1, log_every=50, n_checkpoints=60)
_OOCR_TASKS = {
    "reversal": ("facts x R y, 70% of pairs also trained reversed: is the untrained direction learned? (the reversal curse)",
                 dict(task="reversal", n_items=200, held_out=0.3), {}, dict(steps=1000)),
    "chain": ("A->B, B->C and A->C for 80% of chains: is A->C inferred for the rest?",
              dict(task="chain", n_items=200, held_out=0.2), {}, {}),
    "chain-cot": ("the chain task with the bridge written out (x 1 y z)", dict(task="chain-cot", n_items=200, held_out=0.2), {}, {}),
    "chain-same": ("the chain task with both facts in one training sequence", dict(task="chain-same", n_items=200, held_out=0.2), {}, {}),
    # phi 12: the middle of Wang et al.'s range, where ID generalisation lags memorisation visibly within ~10 min here
    # (phi 7.2 had not generalised by 10k steps, phi 18 generalised with memorisation; docs/oocr.md)
    "two-hop": ("two-hop composition e r1 r2 over 200 entities x 20 relations, phi 12: in-distribution vs OOD",
                dict(task="two-hop", n_items=200, n_relations=20, phi=12.0), dict(n_layers=4), dict(steps=12000)),
}

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


def _oocr_preset(name: str, task: dict, model: dict, train: dict) -> dict:
    from icl_lab.data.oocr import OOCRConfig, build_task

    built = build_task(OOCRConfig(**task))
    return dict(name=f"oocr-{name}", model={**_OOCR_MODEL, "d_vocab": built.d_vocab, "n_ctx": built.n_ctx, **model},
                data={"kind": "oocr", "oocr": task}, train={**_OOCR_TRAIN, **train})


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
    "grokking-1l": (
        "1-layer ReLU transformer on (a + b) mod 113, 30% of pairs, full batch, weight decay 1: groks (Nanda et al. 2023)",
        dict(name="grokking-1l", model=_GROKKING_MODEL,
             data={"kind": "modular", "modular": {"p": _GROKKING_P, "frac": _GROKKING_FRAC}}, train=_GROKKING_TRAIN),
    ),
}


def _add_oocr() -> None:
    for name, (desc, task, model, train) in _OOCR_TASKS.items():
        # built on demand: the task's vocabulary size needs the task, which takes up to a second to build
        _PRESETS[f"oocr-{name}"] = (desc, lambda name=name, task=task, model=model, train=train: _oocr_preset(name, task, model, train))


_add_oocr()


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
