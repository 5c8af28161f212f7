"""`Batch` and `SeededStream`: the one base of every seeded task stream (synthetic sequences and
each organism's task). A stream draws all its randomness from one `torch.Generator`, so its
position is that generator's state (`get_state`/`set_state`, saved in every checkpoint), and its
`fingerprint` says which data a run was trained on (meta.json's `data_fingerprint`, compared
on resume).

One fingerprint convention: sha256 of `"{version}|{identity}"` followed by the bytes of the
stream's `probe` tokens, shown as `sha256:` and 32 hex digits. `identity` defaults to the task
section's JSON with sorted keys (`canonical_json`); `probe` is what the data is (a task's fixed
training set, or the first batch a seed draws). First in the flow data -> model -> train."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """A batch of training sequences.

    Attributes:
        tokens: [batch, pos] token ids.
        repeat_mask: [batch, pos-1] True where the *target* token (tokens[:, i+1]) is a repeat
            predictable from context; aligned with `Transformer.per_token_loss`.
        loss_mask: [batch, pos-1] targets the training loss averages over (None: all), e.g. only
            the answers of out-of-context reasoning facts.
    """

    tokens: Tensor
    repeat_mask: Tensor
    loss_mask: Tensor | None = None


def canonical_json(cfg: BaseModel) -> str:
    """`cfg` as JSON with sorted keys: the same text whatever the order its fields are declared in."""
    return json.dumps(cfg.model_dump(), sort_keys=True)


def digest(text: str, tokens: Tensor) -> str:
    """The fingerprint of `text` and `tokens`' bytes: `sha256:` and 32 hex digits."""
    h = hashlib.sha256(text.encode())
    h.update(tokens.contiguous().numpy().tobytes())
    return f"sha256:{h.hexdigest()[:32]}"


class SeededStream:
    """An endless, seeded stream of `Batch`es whose position can be saved and restored.

    Subclasses set `version` (bumped when the sampling changes), call `super().__init__(seed)`,
    and define `next`, `probe` and (unless the task section is `self.section`) `identity`.
    """

    version: ClassVar[str] = ""
    section: BaseModel | None = None  # the task's config section, hashed by the default `identity`

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        raise NotImplementedError

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def identity(self) -> str:
        """What the fingerprint hashes besides the data: by default the task section's canonical JSON."""
        assert self.section is not None, f"{type(self).__name__} sets neither `section` nor `identity`"
        return canonical_json(self.section)

    def probe(self, seed: int) -> Tensor:
        """The tokens the fingerprint hashes: a fixed training set, or the first batch of `seed`."""
        raise NotImplementedError

    def fingerprint(self, seed: int) -> str:
        """A hash of the version, the identity and the probe tokens for `seed`."""
        return digest(f"{self.version}|{self.identity()}", self.probe(seed))

    def legacy_fingerprints(self, seed: int) -> tuple[str, ...]:
        """Fingerprints an earlier icl-lab wrote for the same data (accepted on resume)."""
        return ()
