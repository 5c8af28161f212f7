"""Checkpoints: one safetensors file per step holding the weights, the AdamW state and the data
generator's RNG state, with step and token count in the header, and a sha256 of everything in it
(`content_hash`) that every load checks, so a damaged file is refused, never half-used. Written
atomically; nothing is pickled, so loading a checkpoint cannot run code."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from icl_lab.errors import CheckpointError, CorruptFileError
from icl_lab.io import write_safetensors

FORMAT = "icl-lab-checkpoint-v2"  # v2: carries HASH_KEY, and must
FORMATS = ("icl-lab-checkpoint-v1", FORMAT)  # v1 (no hash) still loads
HASH_KEY = "content_sha256"


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint restores besides the weights."""

    step: int
    tokens: int
    optimizer: dict | None  # torch optimizer state_dict, or None if not saved
    data_rng: Tensor | None  # torch.Generator state


def content_hash(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """sha256 of a checkpoint's content: every tensor's name, dtype, shape and bytes (by name) and
    the header metadata other than the hash itself. Independent of the file's layout, so the
    header's key order (which safetensors does not fix) cannot change it."""
    return _digest(metadata, ((name, tensors[name]) for name in sorted(tensors)))


def _digest(metadata: dict[str, str], tensors: Iterable[tuple[str, Tensor]]) -> str:
    """`content_hash` over (name, tensor) pairs given in sorted name order, one at a time."""
    digest = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != HASH_KEY}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy of it
    return digest.hexdigest()


def _write(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_safetensors(path, tensors, {**metadata, HASH_KEY: content_hash(tensors, metadata)})


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
    _write(path, tensors, metadata)


def save_weights(path: Path, model: nn.Module, step: int = 0, tokens: int = 0, source: str = "") -> None:
    """A weights-only checkpoint (an imported model): readable by `load_weights`, not resumable."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    _write(path, tensors, {"format": FORMAT, "step": str(step), "tokens": str(tokens), "weights_only": "true", "source": source})


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(f"checkpoint {path.name} is truncated or corrupt ({what}); delete it and rerun with --resume")


def read_checkpoint(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """A checkpoint's header metadata and all its tensors, after checking its content hash.

    Raises:
        CheckpointError: the file is missing or is not an icl-lab checkpoint.
        CorruptFileError: it is truncated, unparseable, or fails its content hash.
    """
    tensors: dict[str, Tensor] = {}
    meta = _verify(path, tensors.__setitem__)
    return meta, tensors


def _verify(path: Path, consume: Callable[[str, Tensor], None] = lambda name, t: None,
            check: Callable[[dict[str, tuple[int, ...]]], None] = lambda shapes: None) -> dict[str, str]:
    """Read `path` one tensor at a time, checking its format and content hash: `check` sees every
    tensor's shape first, then `consume(name, tensor)` each tensor in name order (what it does not
    keep is dropped at once, so the weights of a training checkpoint are read without holding its
    optimiser state). Raises after the last tensor if the hash does not match. Returns the header."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; list the run's checkpoints with `run.checkpoints`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            _check_format(path, meta)
            check({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
            names = sorted(f.keys())

        def read():
            for name in names:
                # one mapping of the file per tensor: the pages read are unmapped with it, so the
                # resident set never holds the whole file (0.7 GB for SmolLM2) on top of the model
                with safe_open(str(path), framework="pt") as g:
                    t = g.get_tensor(name)
                consume(name, t)
                yield name, t

        digest = _digest(meta, read())
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise _corrupt(path, (str(e).splitlines() or [type(e).__name__])[0][:80]) from None
    stored = meta.get(HASH_KEY)
    if stored is not None and stored != digest:
        raise _corrupt(path, "content hash mismatch")
    return meta


def _check_format(path: Path, meta: dict[str, str]) -> None:
    if meta.get("format") not in FORMATS:
        if HASH_KEY in meta:  # an icl-lab header whose format field was damaged
            raise _corrupt(path, "unknown format in its header")
        raise CheckpointError(f"{path.name} is not an icl-lab checkpoint (format {FORMAT} expected)")
    if meta.get(HASH_KEY) is None and meta["format"] != FORMATS[0]:
        raise _corrupt(path, "its content hash is missing")


def checkpoint_problem(path: Path) -> str | None:
    """None if the checkpoint at `path` reads back whole (content hash included), else why not."""
    try:
        _verify(path)
    except CheckpointError as e:
        return str(e)
    return None


def load_weights(path: Path) -> dict[str, Tensor]:
    """The model state_dict stored in a checkpoint (its content hash checked); the optimiser state
    is hashed but never held."""
    tensors: dict[str, Tensor] = {}
    _verify(path, lambda name, t: tensors.__setitem__(name.removeprefix("model."), t) if name.startswith("model.") else None)
    return tensors


@torch.no_grad()
def load_weights_into(model: nn.Module, path: Path) -> None:
    """Copy a checkpoint's weights into `model` in place (into its device and dtype), one tensor at
    a time, so loading holds the model and one tensor, never a second copy of the weights or the
    optimiser state. The content hash is checked as the file is read: if it fails, the error is
    raised after the copy and the model's weights must not be used.

    Raises:
        CheckpointError: the checkpoint's weights do not fit `model` (missing, extra or misshapen);
            checked before anything is copied.
        CorruptFileError: as `read_checkpoint`.
    """
    target = model.state_dict()

    def check(shapes: dict[str, tuple[int, ...]]) -> None:
        weights = {k.removeprefix("model."): v for k, v in shapes.items() if k.startswith("model.")}
        bad = sorted(set(weights) ^ set(target)) + sorted(k for k in set(weights) & set(target) if weights[k] != tuple(target[k].shape))
        if bad:
            raise CheckpointError(f"{path.name} does not fit the model ({', '.join(bad[:3])} missing, extra or misshapen): "
                                  "the run's config.json was edited, or the model was built from another config")

    _verify(path, lambda name, t: target[name.removeprefix("model.")].copy_(t) if name.startswith("model.") else None, check)


def load_train_state(path: Path) -> TrainState:
    """Step, token count, optimiser state_dict and data-RNG state of a checkpoint."""
    meta, tensors = read_checkpoint(path)
    if meta.get("weights_only") == "true":
        raise CheckpointError(f"{path.name} holds weights only (an imported model), so it cannot be resumed; train a new run")
    try:
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        groups = json.loads(meta["optim_param_groups"])
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        step, tokens = int(meta["step"]), int(meta["tokens"])
    except (KeyError, ValueError, TypeError) as e:  # only a v1 file, which has no hash, gets here damaged
        raise _corrupt(path, f"damaged header: {type(e).__name__}") from None
    return TrainState(step=step, tokens=tokens, optimizer={"state": state, "param_groups": groups},
                      data_rng=tensors.get("rng.data"))
