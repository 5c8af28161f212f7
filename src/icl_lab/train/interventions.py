"""Interventions held during training (issue #30): what a branch changes about its model or its
loss while it trains, from its fork step until `until` (then released). A spec is one short string:

    ablate:L1H0            the head contributes nothing (its z is zeroed; `ablate:L1H0=mean` puts
                           the batch's mean z per position instead)
    freeze:L0H1            the head's weights stop changing (restored after every optimiser step,
                           so neither gradients, momentum nor weight decay move them)
    clamp-pattern:L0H1=previous-token   the head's attention is replaced by a fixed pattern
                           (`previous-token`, `uniform` over the keys so far, or `bos`); its values
                           are still learned
    mask-loss:repeats      no loss on targets an earlier copy in the window predicts (the training
                           data's repeat mask: the induction targets)
    smear-keys:on          the paper's smeared keys switched on at the fork (new smearing logits,
                           each starting half-smeared)

`parse` turns a spec into an `Intervention`; the trainer calls `attach` (hooks, returned for
removal), `loss_weight` (a mask for the loss) and `after_step` at every step it is active."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.model.transformer import Transformer

PATTERNS = ("previous-token", "uniform", "bos")
KINDS = ("ablate", "freeze", "clamp-pattern", "mask-loss", "smear-keys")
_HEAD = re.compile(r"L(\d+)H(\d+)")


@dataclass(frozen=True)
class Intervention:
    """One parsed spec (see the module docstring)."""

    kind: str
    layer: int = -1
    head: int = -1
    option: str = ""

    @property
    def spec(self) -> str:
        target = f"L{self.layer}H{self.head}" if self.layer >= 0 else self.option
        option = f"={self.option}" if self.layer >= 0 and self.option else ""
        return f"{self.kind}:{target}{option}"

    def check(self, model: Transformer) -> None:
        """Raise if the model has no such head."""
        if self.layer >= 0 and not (self.layer < model.cfg.n_layers and self.head < model.cfg.n_heads):
            raise ConfigError(f"{self.spec}: the model has no head L{self.layer}H{self.head} "
                              f"({model.cfg.n_layers} layers of {model.cfg.n_heads} heads)")

    def attach(self, model: Transformer) -> list[tuple[str, Callable]]:
        """The forward hooks this intervention needs: (hook name, fn) pairs."""
        if self.kind == "ablate":
            return [(f"blocks.{self.layer}.attn.hook_z", _ablate(self.head, self.option or "zero"))]
        if self.kind == "clamp-pattern":
            return [(f"blocks.{self.layer}.attn.hook_pattern", _clamp(self.head, self.option))]
        return []

    def loss_weight(self, repeat_mask: Tensor | None) -> Tensor | None:
        """A [batch, pos-1] weight for the loss (mask-loss: 0 on the repeat targets), or None."""
        if self.kind != "mask-loss":
            return None
        if repeat_mask is None:
            raise ConfigError("mask-loss:repeats needs data that marks its repeat targets (synthetic or text data)")
        return (~repeat_mask).float()

    def frozen(self, model: Transformer) -> dict[str, Tensor] | None:
        """For freeze: the head's weight slices now, to restore after every optimiser step."""
        if self.kind != "freeze":
            return None
        return {name: t[self.head].detach().clone() for name, t in _head_tensors(model, self.layer).items()}

    def restore(self, model: Transformer, saved: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, t in _head_tensors(model, self.layer).items():
                t[self.head].copy_(saved[name])


def _head_tensors(model: Transformer, layer: int) -> dict[str, Tensor]:
    attn = model.blocks[layer].attn
    names = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"] + (["smear_alpha"] if model.cfg.smeared_key else [])
    return {n: getattr(attn, n) for n in names if getattr(attn, n, None) is not None}


def _ablate(head: int, how: str) -> Callable:
    def hook(z: Tensor, *, hook) -> Tensor:  # [batch, pos, head, d_head]
        zh = z[:, :, head]
        replacement = torch.zeros_like(zh) if how == "zero" else zh.mean(0, keepdim=True).detach().expand_as(zh)
        return torch.cat([z[:, :, :head], replacement[:, :, None], z[:, :, head + 1 :]], dim=2)
    return hook


def _clamp(head: int, pattern: str) -> Callable:
    def hook(p: Tensor, *, hook) -> Tensor:  # [batch, head, query_pos, key_pos]
        n = p.shape[-1]
        if pattern == "previous-token":  # position 0 has no previous token: it keeps itself
            fixed = torch.eye(n, dtype=p.dtype, device=p.device).roll(-1, dims=1).tril()
            fixed[0, 0] = 1
        elif pattern == "uniform":
            fixed = torch.ones(n, n, dtype=p.dtype, device=p.device).tril()
            fixed = fixed / fixed.sum(-1, keepdim=True)
        else:  # bos: everything on the first position
            fixed = torch.zeros(n, n, dtype=p.dtype, device=p.device)
            fixed[:, 0] = 1
        fixed = fixed.expand(p.shape[0], 1, n, n)
        return torch.cat([p[:, :head], fixed, p[:, head + 1 :]], dim=1)
    return hook


def held_hooks(meta: dict, step: int, model: Transformer) -> list[tuple[str, Callable]]:
    """The forward hooks of a branch's intervention (its run's `meta.json`) if it was held at the
    checkpoint of `step` (fork <= step < until), else none. A branch is measured as it trained: a
    head ablated or clamped during training is ablated or clamped when its checkpoints are analysed,
    or the scores would describe a model that never ran (an untrained head switched back on)."""
    fork = meta.get("parent") or {}
    if not fork.get("intervention") or step < fork["step"] or (fork.get("until") is not None and step >= fork["until"]):
        return []
    return parse(fork["intervention"]).attach(model)


def parse(spec: str) -> Intervention:
    """An `Intervention` from its spec (module docstring).

    Raises:
        ConfigError: an unknown kind, a malformed head, or an unknown option; the message names the forms.
    """
    kind, _, rest = spec.partition(":")
    forms = "ablate:L1H0[=mean], freeze:L0H1, clamp-pattern:L0H1=previous-token|uniform|bos, mask-loss:repeats, smear-keys:on"
    if kind not in KINDS or not rest:
        raise ConfigError(f"unknown intervention {spec!r}; write one of {forms}")
    if kind == "mask-loss":
        if rest != "repeats":
            raise ConfigError(f"unknown loss mask {rest!r} in {spec!r}; the one mask is mask-loss:repeats")
        return Intervention(kind, option=rest)
    if kind == "smear-keys":
        if rest != "on":
            raise ConfigError(f"{spec!r}: smeared keys can only be switched on (smear-keys:on)")
        return Intervention(kind, option=rest)
    target, _, option = rest.partition("=")
    m = _HEAD.fullmatch(target)
    if not m:
        raise ConfigError(f"{spec!r}: name the head as L<layer>H<head>, e.g. {kind}:L1H0")
    if kind == "clamp-pattern" and option not in PATTERNS:
        raise ConfigError(f"{spec!r}: clamp the pattern to one of {', '.join(PATTERNS)} (e.g. clamp-pattern:L0H1=previous-token)")
    if kind == "ablate" and option not in ("", "zero", "mean"):
        raise ConfigError(f"{spec!r}: ablate with zero (the default) or mean, e.g. ablate:L1H0=mean")
    if kind == "freeze" and option:
        raise ConfigError(f"{spec!r}: freeze takes no option (freeze:L0H1)")
    return Intervention(kind, int(m.group(1)), int(m.group(2)), option)


class Held:
    """An intervention as the trainer holds it, from the fork until step `until` (None: to the end):
    `before(step)` attaches or removes its hooks, `weight(repeat_mask, step)` masks the loss,
    `after(step)` restores frozen weights after the optimiser step, `close()` removes everything."""

    def __init__(self, intervention: Intervention, model: Transformer, until: int | None) -> None:
        intervention.check(model)
        self.iv, self.model, self.until = intervention, model, until
        self.saved = intervention.frozen(model)
        self.added: list[tuple] = []

    def active(self, step: int) -> bool:
        return self.until is None or step < self.until

    def before(self, step: int) -> None:
        if self.active(step) and not self.added:
            for name, fn in self.iv.attach(self.model):
                hp = self.model.hook_dict[name]
                hp.fns.append(fn)
                self.added.append((hp, fn))
        elif not self.active(step):
            self.close()

    def weight(self, repeat_mask: Tensor | None, step: int) -> Tensor | None:
        return self.iv.loss_weight(repeat_mask) if self.active(step) else None

    def after(self, step: int) -> None:
        if self.saved is not None and self.active(step):
            self.iv.restore(self.model, self.saved)

    def close(self) -> None:
        for hp, fn in self.added:
            hp.fns.remove(fn)
        self.added = []
