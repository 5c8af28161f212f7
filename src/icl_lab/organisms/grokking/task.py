"""Modular addition, the grokking task of Power et al. (2022) and Nanda et al. (2023): sequences
`a b = c` with c = (a + b) mod p, where the answer c is the only target (`Batch.loss_mask`).

Tokens 0..p-1 are the numbers and token p is `=`, so a model needs d_vocab >= p + 1 and n_ctx >= 4.
All p² pairs are split once, by `ModularConfig.split_seed`, into a training share `frac` and a
held-out rest; `ModularStream` yields the whole training set at every step (full-batch training)
when `train.batch_size` equals its size, else a fresh sample of that many training pairs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from jaxtyping import Bool, Int
from pydantic import Field, field_validator
from torch import Tensor

from icl_lab._config import FrozenConfig
from icl_lab.data.stream import Batch, SeededStream, digest
from icl_lab.errors import DataError

GENERATOR_VERSION = "modular-v1"


class ModularConfig(FrozenConfig):
    """Modular addition: the `data.modular` section of a run of kind "modular".

    Attributes:
        p: the modulus (a prime, so every non-zero frequency has order p); numbers are 0..p-1.
        frac: share of the p² pairs in the training set; the rest is held out.
        split_seed: draws the split (the run seed changes only the initialisation).
    """

    p: int = Field(default=113, ge=3)
    frac: float = Field(default=0.3, gt=0, lt=1)
    split_seed: int = 0

    @field_validator("p")
    @classmethod
    def _odd(cls, p: int) -> int:
        if p % 2 == 0:
            raise ValueError(f"p={p} is even; use an odd modulus such as the prime 113 (every frequency then has a cos and a sin)")
        return p


@dataclass(frozen=True)
class ModularTask:
    """The split of a modular-addition task.

    Attributes:
        p: the modulus; token p is `=`.
        pairs: [p*p, 2] every (a, b), in the order a * p + b (row i is a = i // p, b = i % p).
        is_train: [p*p] True where the pair (in `pairs` order) is in the training set.
        train: [n_train, 4] training sequences `a b = c`, in the split's (seeded) order.
    """

    p: int
    pairs: Int[Tensor, "pair 2"]
    is_train: Bool[Tensor, " pair"]
    train: Int[Tensor, "n_train 4"]

    @property
    def n_train(self) -> int:
        return len(self.train)


def sequences(pairs: Int[Tensor, "n 2"], p: int) -> Int[Tensor, "n 4"]:
    """`a b = c` for each pair (a, b), with c = (a + b) mod p."""
    a, b = pairs[:, 0], pairs[:, 1]
    return torch.stack([a, b, torch.full_like(a, p), (a + b) % p], dim=1)


def train_size(cfg: ModularConfig) -> int:
    """How many of the p² pairs the training set holds: round(frac * p²), at least 1."""
    return max(1, min(cfg.p * cfg.p - 1, round(cfg.frac * cfg.p * cfg.p)))


@lru_cache(maxsize=16)
def build_split(cfg: ModularConfig) -> ModularTask:
    """The task `cfg` describes (cached: equal configs share one object).

    Example:
        >>> task = build_split(ModularConfig(p=7, frac=0.5))
        >>> task.train[0]   # tensor([a, b, 7, (a + b) % 7])
    """
    p = cfg.p
    pairs = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), dim=-1).reshape(-1, 2)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(cfg.split_seed))
    chosen = order[: train_size(cfg)]
    is_train = torch.zeros(p * p, dtype=torch.bool)
    is_train[chosen] = True
    return ModularTask(p, pairs, is_train, sequences(pairs[chosen], p))


def task_problem(cfg: ModularConfig, d_vocab: int, n_ctx: int) -> str | None:
    """Why a model of `d_vocab`/`n_ctx` cannot read `a b = c` modulo cfg.p, or None."""
    if d_vocab < cfg.p + 1:
        return f"modular addition mod {cfg.p} needs d_vocab >= {cfg.p + 1} (the numbers and `=`); raise model.d_vocab"
    if n_ctx < 4:
        return "modular addition needs n_ctx >= 4 (`a b = c`); raise model.n_ctx to 4"
    return None


class ModularStream(SeededStream):
    """The training stream of a modular-addition run: the whole training set at every step when
    `batch_size` equals its size (full batch, fixed order), else `batch_size` pairs drawn without
    replacement each step. The loss mask keeps only the answer (the target of the `=` position);
    the fingerprint hashes the task section and the training set.

    Raises:
        DataError: the model cannot hold the task, or batch_size exceeds the training set.
    """

    version = GENERATOR_VERSION

    def __init__(self, cfg, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        problem = task_problem(cfg.modular, d_vocab, n_ctx)
        if problem:
            raise DataError(problem)
        self.task = build_split(cfg.modular)
        if batch_size > self.task.n_train:
            raise DataError(f"train.batch_size={batch_size} exceeds the {self.task.n_train} training pairs; "
                            f"set it to {self.task.n_train} for full-batch training")
        super().__init__(seed)
        self.section, self.n_ctx, self.batch_size = cfg.modular, n_ctx, batch_size
        tokens = torch.nn.functional.pad(self.task.train, (0, n_ctx - 4), value=cfg.modular.p)
        mask = torch.zeros((len(tokens), n_ctx - 1), dtype=torch.bool)
        mask[:, 2] = True  # the `=` position predicts the answer
        self._tokens, self._mask = tokens, mask

    def next(self) -> Batch:
        if self.batch_size == self.task.n_train:
            return Batch(tokens=self._tokens, repeat_mask=self._mask, loss_mask=self._mask)
        idx = torch.randperm(self.task.n_train, generator=self.generator)[: self.batch_size]
        return Batch(tokens=self._tokens[idx], repeat_mask=self._mask[idx], loss_mask=self._mask[idx])

    def probe(self, seed: int) -> Tensor:
        return self.task.train

    def legacy_fingerprints(self, seed: int) -> tuple[str, ...]:
        # before the shared base, this stream hashed the section in field order (decision 31)
        return (digest(f"{self.version}|{self.section.model_dump_json()}", self.task.train),)


def component_names(p: int) -> list[str]:
    """Labels of `fourier_basis(p)`'s rows: const, cos 1, sin 1, cos 2, ..."""
    return ["const"] + [f"{f} {k}" for k in range(1, (p - 1) // 2 + 1) for f in ("cos", "sin")]
