"""Synthetic in-context sequences, generated on the fly and deterministic by seed.

Each "repeated" sequence is `[BOS] prefix segment segment segment ...`: a random-length prefix of
random tokens, then a random segment of random length P repeated to the end of the context. A
token in the repeated part equals the token P positions earlier, but P and the offset change from
sequence to sequence, so predicting it needs an induction circuit (find the previous occurrence of
the current token, copy what followed), not a fixed positional look-back."""

from __future__ import annotations

import torch
from torch import Tensor

from icl_lab.data.config import DataConfig
from icl_lab.data.stream import Batch, SeededStream
from icl_lab.data.tasks import TASKS, sample_task, task_problem
from icl_lab.errors import DataError
from icl_lab.kinds import organism

GENERATOR_VERSION = "synthetic-v1"  # bump when the sampling below changes, to change fingerprints
# synthetic-v1 hashed DataConfig's JSON while it still held the default section of a task that has
# since moved to its own organism package; those bytes stay in the hashed text, so the fingerprints
# of runs trained before the move still match (docs/decisions.md, decision 31)
_V1_SECTIONS = (',"oocr":{"task":"reversal","n_items":200,"held_out":0.3,"n_relations":20,"phi":12.0,'
                '"ood":0.05,"context_share":0.2,"task_seed":0}')

__all__ = ["Batch", "SyntheticStream", "sample_batch", "shape_problem"]


class SyntheticStream(SeededStream):
    """An endless, seeded stream of synthetic batches whose position can be saved and restored.

    Example:
        >>> stream = SyntheticStream(DataConfig(), d_vocab=128, n_ctx=64, batch_size=32, seed=0)
        >>> batch = stream.next()   # Batch(tokens [32, 64], repeat_mask [32, 63])
    """

    version = GENERATOR_VERSION

    def __init__(self, cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, seed: int) -> None:
        problem = shape_problem(cfg, d_vocab, n_ctx)
        if problem:
            raise DataError(problem)
        super().__init__(seed)
        self.cfg, self.d_vocab, self.n_ctx, self.batch_size = cfg, d_vocab, n_ctx, batch_size

    def next(self) -> Batch:
        return sample_batch(self.cfg, self.d_vocab, self.n_ctx, self.batch_size, self.generator)

    def identity(self) -> str:
        # the text-only BOS fields do not change synthetic data (BOS is token 0), so they stay out
        # and fingerprints from before they existed still match
        cfg = self.cfg.model_dump_json(exclude={"bos_id", "prepend_bos"})
        return f"{cfg[:-1]}{_V1_SECTIONS}}}|{self.d_vocab}|{self.n_ctx}"

    def probe(self, seed: int) -> Tensor:
        return sample_batch(self.cfg, self.d_vocab, self.n_ctx, self.batch_size, torch.Generator().manual_seed(seed)).tokens


def shape_problem(cfg: DataConfig, d_vocab: int, n_ctx: int) -> str | None:
    """Why `cfg` cannot fill sequences of `n_ctx` tokens from `d_vocab`, or None if it can."""
    if cfg.kind == "text":
        return None  # the tokenizer checks d_vocab when the text is loaded
    if cfg.kind in (*TASKS, "mixture"):
        return task_problem(d_vocab, n_ctx, cfg.min_period)
    org = organism(cfg.kind)
    if org is not None:
        return org.problem(getattr(cfg, cfg.kind), d_vocab, n_ctx)
    first = 1 if cfg.bos else 0
    if d_vocab - first < 2:
        return f"d_vocab={d_vocab} leaves fewer than 2 content tokens; raise d_vocab"
    if cfg.kind == "repeated" and first + cfg.max_offset + 2 * cfg.max_period > n_ctx:
        return (
            f"n_ctx={n_ctx} cannot hold BOS + max_offset={cfg.max_offset} + two copies of "
            f"max_period={cfg.max_period}; lower data.max_period/max_offset or raise model.n_ctx"
        )
    return None


def sample_batch(cfg: DataConfig, d_vocab: int, n_ctx: int, batch_size: int, gen: torch.Generator) -> Batch:
    """Draw one synthetic batch. All randomness comes from `gen`."""
    if cfg.kind == "text":
        raise DataError("sample_batch draws synthetic data; for text use icl_lab.data.open_stream or text.sample_windows")
    org = organism(cfg.kind)
    if org is not None:
        raise DataError(f"{cfg.kind} runs draw their data from icl_lab.data.open_stream; {org.hint('RUN')}")
    if cfg.kind in (*TASKS, "mixture"):
        task = sample_task(cfg.kind, d_vocab, n_ctx, batch_size, gen, cfg.min_period, cfg.max_period)
        return Batch(tokens=task.tokens, repeat_mask=task.target_mask)
    first = 1 if cfg.bos else 0
    tokens = torch.randint(first, d_vocab, (batch_size, n_ctx), generator=gen)
    repeat = torch.zeros(batch_size, n_ctx, dtype=torch.bool)
    if cfg.kind == "repeated":
        period = torch.randint(cfg.min_period, cfg.max_period + 1, (batch_size, 1), generator=gen)
        start = first + torch.randint(0, cfg.max_offset + 1, (batch_size, 1), generator=gen)
        pos = torch.arange(n_ctx)[None, :]  # [1, pos]
        repeat = pos >= start + period  # [batch, pos]
        # every repeated position reads from its copy inside the first segment
        source = torch.where(repeat, start + (pos - start) % period, pos)
        tokens = tokens.gather(1, source)
    if cfg.bos:
        tokens[:, 0] = 0
    return Batch(tokens=tokens, repeat_mask=repeat[:, 1:])
