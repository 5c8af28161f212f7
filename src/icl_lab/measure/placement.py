"""Where measurements run: the device and dtype a model is measured on (`--device`, `--dtype`).
Inputs always follow the model's own device, so any stage can run on a GPU when one is there."""

from __future__ import annotations

import torch

from icl_lab.errors import ConfigError
from icl_lab.model.transformer import Transformer
from icl_lab.train.trainer import resolve_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def resolve_dtype(name: str | None) -> torch.dtype:
    """torch dtype for "fp32" (the default), "bf16", "fp16" or "fp64"."""
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def place(model: Transformer, device: str | None = None, dtype: str | None = None) -> Transformer:
    """`model` moved to `device` ("cpu", "cuda", "cuda:1", "auto"; default cpu) in `dtype`, in eval mode."""
    return model.to(device=resolve_device(device or "cpu"), dtype=resolve_dtype(dtype)).eval()


def model_device(model: Transformer) -> torch.device:
    """The device the model's weights live on (inputs are moved there)."""
    return next(model.parameters()).device
