"""Data-parallel training with torchrun and DDP: gloo on CPU, NCCL on GPU.

Launched as `torchrun --nproc-per-node N -m icl_lab.cli train ...` (or `icl_lab.train(...)` in a
script torchrun starts), every process runs the same trainer. A DDP run is the same run as a
one-process run: each rank draws the *same* global batch from the same data stream and takes its
own slice of rows, the loss is normalised by the global batch (so DDP's gradient average is the
full batch's gradient), and the logged sums are all-reduced. Rank 0 alone holds the run's lock and
writes the run directory (meta.json, the log, checkpoints); a resume starts every rank from the
checkpoint rank 0 picked.

Launch it with torchrun: when rank 0 fails alone (the run's lock is held, a full disk), torchrun's
agent stops the other ranks, which would otherwise wait in the next collective until its timeout.

Outside torchrun (no WORLD_SIZE in the environment) `World.from_env()` is a single process and
every method is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from icl_lab.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "World":
        """The torchrun world this process is part of (one process when not launched by torchrun)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK when training on CUDA, else `device`."""
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    @contextlib.contextmanager
    def joined(self, device: torch.device) -> Iterator[None]:
        """Inside the block, this process is in the group (gloo on CPU, NCCL on CUDA); after it, the
        group is destroyed, so torchrun's processes exit without a dangling group. A group that
        already existed (a script that set one up itself) is left to its owner."""
        if self.size <= 1 or dist.is_initialized():
            yield
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        try:
            yield
        finally:
            dist.destroy_process_group()

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ConfigError(f"train.batch_size {batch_size} does not split over {self.size} processes; "
                              f"use a multiple of {self.size} or another --nproc-per-node")

    def rows(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's slice of a global batch's rows [batch, ...] -> [batch / size, ...]."""
        if t is None or self.size <= 1:
            return t
        n = t.shape[0] // self.size
        return t[self.rank * n:(self.rank + 1) * n]

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around `module` (its forward is then what syncs gradients); the module itself alone."""
        if self.size <= 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place over the ranks; returns `t`."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if self.size <= 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class TokenLoss(nn.Module):
    """The training loss as a module whose `forward` is the model's per-token loss, so DDP's
    forward (which arms its gradient all-reduce) is what computes it: [batch, pos] -> [batch, pos-1]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.per_token_loss(tokens)
