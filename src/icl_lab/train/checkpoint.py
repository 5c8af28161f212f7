"""Checkpoints: one safetensors file per step holding the weights, the AdamW state and the data
generator's RNG state, with step and token count in the header. Written atomically; nothing is
pickled, so loading a checkpoint cannot run code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from icl_lab.errors import CheckpointError
from icl_lab.io import write_safetensors

FORMAT = "icl-lab-checkpoint-v1"


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint restores besides the weights."""

    step: int
    tokens: int
    optimizer: dict | None  # torch optimizer state_dict, or None if not saved
    data_rng: Tensor | None  # torch.Generator state


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, data_rng: Tensor, step: int, tokens: int
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    tensors["rng.data"] = data_rng
    metadata = {
        "format": FORMAT,
        "step": str(step),
        "tokens": str(tokens),
        "optim_param_groups": json.dumps(opt["param_groups"]),
    }
    write_safetensors(path, {k: v.cpu() for k, v in tensors.items()}, metadata)


def save_weights(path: Path, model: nn.Module, step: int = 0, tokens: int = 0, source: str = "") -> None:
    """A weights-only checkpoint (an imported model): readable by `load_weights`, not resumable."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(path, tensors, {"format": FORMAT, "step": str(step), "tokens": str(tokens), "weights_only": "true", "source": source})


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; list the run's checkpoints with `run.checkpoints`")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path.name} is truncated or corrupt ({str(e).splitlines()[0][:80]}); delete it and rerun with --resume"
        ) from None


def load_weights(path: Path) -> dict[str, Tensor]:
    """The model state_dict stored in a checkpoint."""
    with _open(path) as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise CheckpointError(f"{path.name} is not an icl-lab checkpoint (format {FORMAT} expected)")
        return {k.removeprefix("model."): f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


def load_train_state(path: Path) -> TrainState:
    """Step, token count, optimiser state_dict and data-RNG state of a checkpoint."""
    with _open(path) as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path.name} is not an icl-lab checkpoint (format {FORMAT} expected)")
        state: dict[int, dict[str, Tensor]] = {}
        for key in f.keys():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = f.get_tensor(key)
        if meta.get("weights_only") == "true":
            raise CheckpointError(f"{path.name} holds weights only (an imported model), so it cannot be resumed; train a new run")
        groups = json.loads(meta["optim_param_groups"])
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        return TrainState(
            step=int(meta["step"]),
            tokens=int(meta["tokens"]),
            optimizer={"state": state, "param_groups": groups},
            data_rng=f.get_tensor("rng.data") if "rng.data" in f.keys() else None,
        )
