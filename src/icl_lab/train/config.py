"""`TrainConfig` and `ExperimentConfig`: the optimiser, schedule and checkpointing of a run, and the
whole experiment (model + data + training + seed) that a run directory stores and reruns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from icl_lab._config import FrozenConfig
from icl_lab.data.config import DataConfig
from icl_lab.data.synthetic import shape_problem
from icl_lab.errors import ConfigError
from icl_lab.model.config import ModelConfig


class TrainConfig(FrozenConfig):
    """Optimisation and checkpointing.

    Attributes:
        steps: optimiser steps in the whole run.
        batch_size: sequences per step (each n_ctx tokens long).
        lr: peak learning rate of AdamW.
        warmup_steps: linear warm-up from 0 to `lr`. Induction heads may fail to form with no
            warm-up or too high a learning rate.
        schedule: after warm-up, "constant"; "cosine" decay to `lr * min_lr_ratio`; or "wsd"
            (warm-up, stable, decay): constant, then a linear decay to `lr * min_lr_ratio` over the
            last `decay_share` of the steps.
        decay_share: the share of all steps the "wsd" schedule spends decaying, at the end.
        weight_decay: AdamW decay, applied only to parameters with 2+ dimensions.
        grad_clip: max global gradient norm (0 disables clipping).
        n_checkpoints: about this many checkpoints, half log-spaced and half linear in step.
        log_every: write a training-log row every this many steps (and at every checkpoint).
        dtype: "fp32", or "bf16" autocast (CPU AMX or CUDA); weights and optimiser stay fp32.
        device: where to train ("auto" picks CUDA when available, else CPU). Not part of the
            experiment: configs that differ only here are the same run (`ExperimentConfig.same_run`),
            so a run started on CPU resumes on a GPU and back.
        compile: run the loss's forward and backward through `torch.compile` (inductor; needs a C++
            compiler on CPU). Same maths, fused kernels: faster on long runs after a compile of
            10-30 s (docs/benchmarks.md). Like `device`, not part of the experiment's identity.
    """

    steps: int = Field(ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0, le=1)
    warmup_steps: int = Field(default=30, ge=0)
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_share: float = Field(default=0.2, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(default=1.0, ge=0)
    n_checkpoints: int = Field(default=100, ge=2)
    log_every: int = Field(default=10, ge=1)
    dtype: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False


class ExperimentConfig(FrozenConfig):
    """Everything that determines a run; stored as `config.json` in the run directory, which alone
    rebuilds the run."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig

    @model_validator(mode="after")
    def _check(self):
        if self.train.warmup_steps > self.train.steps:
            raise ValueError(
                f"train.warmup_steps={self.train.warmup_steps} exceeds train.steps={self.train.steps}; shorten the warm-up"
            )
        problem = shape_problem(self.data, self.model.d_vocab, self.model.n_ctx)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        """Read a config JSON file (a run directory's `config.json`, or the directory itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass a config JSON or a run directory")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); fix the file") from None
        except (UnicodeDecodeError, RecursionError) as e:
            what = f"is not UTF-8 text (byte {e.start})" if isinstance(e, UnicodeDecodeError) else "nests too deeply"
            raise ConfigError(f"{path} {what}; fix the file") from None
        return cls.parse(data, where=f"config {path.name}")

    def same_run(self, other: "ExperimentConfig") -> bool:
        """Whether `other` describes the same experiment: equal in everything but `train.device`
        and `train.compile` (where and how a run executes does not change which run it is)."""
        neutral = {"device": "auto", "compile": False}
        return self.replace(train=neutral) == other.replace(train=neutral)
