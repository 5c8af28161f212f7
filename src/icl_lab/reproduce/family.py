"""The model families `icl-lab reproduce` trains, at three scales, and `Lab`: the folder of runs
they live in, which trains a run only when it is missing or unfinished and analyses it only when
its analysis is out of date.

All models share the synthetic setup of the `synthetic-2l` preset (vocab 128, context 64, no
LayerNorm, learned positions): Olsson et al.'s small models read natural text, but on 2 CPU cores
a phase change on text was not reached in the time budget (docs/natural-phase-change.md), while
on repeated random segments every multi-layer model shows one within a minute."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from icl_lab.errors import ConfigError
from icl_lab.pipeline.analyze import analyze, is_analysed
from icl_lab.run.rundir import Run, load_run
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.presets import get_preset
from icl_lab.train.trainer import ensure_trained

Log = Callable[[str], None]
TrainProgress = Callable[[str, int, int], None]  # (run name, step, total steps)


@dataclass(frozen=True)
class Scale:
    """How big the reproduction runs are.

    Attributes:
        width: d_model of the base models (the continuity family spans width..4*width).
        steps: optimiser steps of the base models (the mixture model trains twice as long).
        n_checkpoints: checkpoints per run.
        n_examples: evaluation sequences for analysis and interventions.
        seeds: seeds of the smeared-key comparison (Argument 2).
        d_vocab, n_ctx: the synthetic data's vocabulary and context.
        batch_size: sequences per step.
    """

    width: int
    steps: int
    n_checkpoints: int
    n_examples: int
    seeds: tuple[int, ...]
    d_vocab: int = 128
    n_ctx: int = 64
    batch_size: int = 32


SCALES = {
    "tiny": Scale(width=16, steps=40, n_checkpoints=8, n_examples=16, seeds=(0, 1, 2), d_vocab=32, n_ctx=48, batch_size=8),
    "default": Scale(width=64, steps=1500, n_checkpoints=100, n_examples=256, seeds=(0, 1, 2)),
    # for a GPU: wider models, a larger vocabulary and longer contexts, closer to the paper's
    "paper": Scale(width=256, steps=20000, n_checkpoints=200, n_examples=1024, seeds=(0, 1, 2, 3, 4),
                   d_vocab=2048, n_ctx=256, batch_size=64),
}

# name -> (model changes relative to the base, train changes, data kind). Widths and MLP sizes are
# multiples of the scale's width, so one table serves every scale.
MODELS: dict[str, tuple[dict, dict, str]] = {
    "attn-1l": (dict(n_layers=1), {}, "repeated"),
    "attn-2l": (dict(n_layers=2), {}, "repeated"),
    "attn-3l": (dict(n_layers=3), {}, "repeated"),
    "mlp-1l": (dict(n_layers=1, d_mlp=4), {}, "repeated"),
    "mlp-2l": (dict(n_layers=2, d_mlp=4), {}, "repeated"),
    "mlp-3l": (dict(n_layers=3, d_mlp=4), {}, "repeated"),
    "smeared-1l": (dict(n_layers=1, smeared_key=True), {}, "repeated"),
    "smeared-2l": (dict(n_layers=2, smeared_key=True), {}, "repeated"),
    "attn-2l-4h": (dict(n_layers=2, n_heads=4), {}, "repeated"),
    "attn-4l": (dict(n_layers=4), {}, "repeated"),
    "mlp-3l-2w": (dict(n_layers=3, width=2, n_heads=2, d_mlp=8), {}, "repeated"),
    "attn-2l-4w": (dict(n_layers=2, width=4, n_heads=4), {}, "repeated"),
    "mixture-2l-4h": (dict(n_layers=2, n_heads=4), dict(steps_scale=2), "mixture"),
}


def experiment(name: str, scale: Scale, seed: int = 0) -> ExperimentConfig:
    """The `ExperimentConfig` of family member `name` at `scale` with `seed`."""
    if name not in MODELS:
        raise ConfigError(f"unknown reproduction model {name!r}; known: {', '.join(MODELS)}")
    model_over, train_over, kind = MODELS[name]
    model_over = dict(model_over)
    width = scale.width * model_over.pop("width", 1)
    d_mlp = width * model_over.pop("d_mlp", 0)
    base = get_preset("synthetic-2l")
    max_period = min(base.data.max_period, (scale.n_ctx - 1 - base.data.max_offset) // 2)
    return base.replace(
        name=name, seed=seed,
        model=base.model.replace(d_model=width, d_mlp=d_mlp, d_vocab=scale.d_vocab, n_ctx=scale.n_ctx, **model_over),
        data=base.data.replace(kind=kind, max_period=max_period, min_period=min(base.data.min_period, max_period)),
        train=base.train.replace(
            steps=int(scale.steps * train_over.get("steps_scale", 1)), batch_size=scale.batch_size,
            n_checkpoints=scale.n_checkpoints,
            warmup_steps=min(base.train.warmup_steps, scale.steps // 4),
        ),
    )


@dataclass
class Lab:
    """The folder of reproduction runs (`ROOT/NAME-sSEED`), shared by every argument.

    Attributes:
        root: the folder.
        scale: the `Scale`.
        log: called with a line for each thing done (training, analysing, measuring).
        train_progress: called during training with (run name, step, total).
        configure: the config of a family member, for families other than the synthetic one
            (`icl_lab.reproduce.natural`).
        device, dtype: where the family trains and is analysed, and the analyses' precision (None:
            the presets' device, analyses on the CPU); not part of any run's identity. The
            arguments' own interventions (ablations, patching) run on the CPU.
    """

    root: Path
    scale: Scale
    log: Log = field(default=lambda line: None)
    train_progress: TrainProgress | None = None
    configure: Callable[[str, int], ExperimentConfig] | None = None  # (name, seed) -> config; default `experiment`
    device: str | None = None
    dtype: str | None = None

    def run(self, name: str, seed: int = 0, analysed: bool = True) -> Run:
        """Family member `name` with `seed`: trained (or resumed) unless finished, and analysed on
        its own unless its analysis is up to date."""
        cfg = self.configure(name, seed) if self.configure else experiment(name, self.scale, seed)
        cfg = cfg.replace(train={"device": self.device}) if self.device else cfg
        path = self.root / f"{name}-s{seed}"
        if (path / "config.json").is_file() and not ExperimentConfig.load(path).same_run(cfg):
            raise ConfigError(f"{path} holds a different experiment (another --scale?); remove it or choose another --out")
        progress = None
        if self.train_progress is not None:
            progress = lambda step, total, rec, tag=path.name: self.train_progress(tag, step, total)  # noqa: E731
        announce = lambda: self.log(f"training {path.name} ({cfg.train.steps} steps)")  # noqa: E731
        run = load_run(ensure_trained(cfg, path, progress, announce)[0])
        if analysed and not is_analysed([run], self.scale.n_examples):
            self.log(f"analysing {path.name}")
            device = None if self.device == "auto" else self.device
            analyze([run], n_examples=self.scale.n_examples, device=device, dtype=self.dtype)
        return run
