"""Head ablations, batched: every head of every layer ablated in one forward pass.

Olsson et al. (2022), "In-context Learning and Induction Heads", Argument 3, ablate heads and
measure how much in-context learning disappears. A head is ablated by replacing its output
`z [batch, pos, head, d_head]` (at `blocks.{l}.attn.hook_z`) with

- zeros ("zero"),
- its mean over the evaluation examples, per position ("mean"), or
- its value on another example of the batch, example i taking example i+1's ("resample").

Two forms: **full**, where every later attention pattern recomputes, and **pattern-preserving**
(the paper's choice), where every attention pattern is forced to its value in the clean run, so
only the paths through values and the residual stream change. Instead of one forward pass per
head, the batch is repeated once per head and each copy ablates its own head: the whole sweep is
one pass, under `torch.inference_mode`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.model.hooks import HookPoint
from icl_lab.model.transformer import Transformer

AblationKind = Literal["zero", "mean", "resample"]
KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample")


def all_heads(model: Transformer) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def _replacement(z: Tensor, kind: AblationKind) -> Tensor:
    if kind == "zero":
        return torch.zeros_like(z)
    if kind == "mean":
        return z.mean(0, keepdim=True).expand_as(z)
    if kind == "resample":
        return z.roll(-1, dims=0)
    raise ConfigError(f"unknown ablation kind {kind!r}; choose one of {', '.join(KINDS)}")


def _check(model: Transformer, heads: Sequence[tuple[int, int]], kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown ablation kind {kind!r}; choose one of {', '.join(KINDS)}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ConfigError(f"no head L{layer}H{head} in a {n_layers}-layer, {n_heads}-head model")


def _losses(logits: Tensor, tokens: Tensor) -> Tensor:
    targets = F.pad(tokens[:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=-100)
    return loss.view(tokens.shape)[:, :-1]


@torch.inference_mode()
def ablate_heads(
    model: Transformer,
    tokens: Int[Tensor, "batch pos"],
    heads: Sequence[tuple[int, int]] | None = None,
    kind: str = "zero",  # AblationKind, checked here so a typo gets a one-line error
    pattern_preserving: bool = True,
    max_elements: int = 2**24,
) -> Float[Tensor, "ablation batch pos_minus_1"]:
    """Per-token loss with each head ablated in turn, in batched passes: as many ablations share a
    pass as keep its largest tensors under `max_elements` (larger passes spend their time
    allocating memory rather than computing). Pattern-preserving sweeps take a shortcut that
    recomputes only what can change (see `_ablate_with_frozen_patterns`).

    Args:
        model: the model.
        tokens: [batch, pos] evaluation sequences.
        heads: (layer, head) pairs to ablate, default every head.
        kind: "zero", "mean" or "resample".
        pattern_preserving: force every attention pattern to its clean value.

    Returns:
        [1 + len(heads), batch, pos-1]: row 0 is the clean run, row 1+i has heads[i] ablated.
    """
    heads = list(all_heads(model) if heads is None else heads)
    _check(model, heads, kind)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    if pattern_preserving:
        return _ablate_with_frozen_patterns(model, tokens, heads, kind, max_elements)
    clean_logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    out = [_losses(clean_logits, tokens)]
    batch, n_pos = tokens.shape
    per_pass = max(1, max_elements // (batch * n_heads * n_pos * n_pos))
    for start in range(0, len(heads), per_pass):
        chunk = heads[start : start + per_pass]
        mask = torch.zeros(len(chunk), n_layers, n_heads, device=device)  # which copy ablates what
        for i, (layer, head) in enumerate(chunk):
            mask[i, layer, head] = 1.0
        hooks = []
        for layer in range(n_layers):
            if not mask[:, layer].any():
                continue
            repl = _replacement(cache["z", layer], kind)  # [batch, pos, head, d_head]
            m = mask[:, layer][:, None, None, :, None]  # [copy, 1, 1, head, 1]

            def patch_z(z: Tensor, *, hook: HookPoint, repl: Tensor = repl, m: Tensor = m) -> Tensor:
                z = z.view(m.shape[0], -1, *z.shape[1:])  # [copy, batch, pos, head, d_head]
                return (z * (1 - m) + repl * m).flatten(0, 1)

            hooks.append((f"blocks.{layer}.attn.hook_z", patch_z))
        logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        out.append(_losses(logits, tokens.repeat(len(chunk), 1)).view(len(chunk), batch, -1))
    return torch.cat([out[0][None], *out[1:]])


def _ablate_with_frozen_patterns(model: Transformer, tokens: Tensor, heads: list[tuple[int, int]], kind: str, max_elements: int) -> Tensor:
    """Pattern-preserving ablation without recomputing what cannot change: each copy starts at
    the ablated head's layer from the cached clean residual stream, and since every pattern is
    frozen, later layers compute only values and outputs (no queries, keys, scores or softmax);
    the frozen patterns broadcast over the copies instead of being copied. The result equals the
    hook-based `ablate_heads_serially` (tested); user hooks do not run inside this pass."""
    keep = lambda n: n.endswith(("hook_z", "hook_pattern", "hook_resid_pre"))  # noqa: E731
    clean_logits, cache = model.run_with_cache(tokens, names_filter=keep)
    batch, n_pos = tokens.shape
    results = {}
    pos_embed = model.shortformer_pos(n_pos)
    for layer in sorted({l for l, _ in heads}):
        in_layer = [h for l, h in heads if l == layer]
        per_pass = max(1, max_elements // (batch * n_pos * max(model.cfg.d_model, model.cfg.d_vocab)))
        for start in range(0, len(in_layer), per_pass):
            chunk = in_layer[start : start + per_pass]
            n = len(chunk)
            resid = cache["resid_pre", layer].expand(n, *cache["resid_pre", layer].shape)  # [copy, batch, pos, d_model]
            for j in range(layer, model.cfg.n_layers):
                block = model.blocks[j]
                a = block.attn
                v = a._project(block.attn_inputs(resid, pos_embed)[2], a.W_V, a.b_V)  # [copy, batch, pos, head, d_head]
                z = torch.einsum("bhqk,nbkhe->nbqhe", cache["pattern", j].to(v.dtype), v)
                if j == layer:
                    repl = _replacement(cache["z", layer], kind)  # [batch, pos, head, d_head]
                    z = z.clone()
                    for i, head in enumerate(chunk):
                        z[i, :, :, head] = repl[:, :, head]
                h, e, d = a.W_O.shape
                attn_out = z.reshape(*z.shape[:3], h * e) @ a.W_O.reshape(h * e, d)
                attn_out = attn_out if a.b_O is None else attn_out + a.b_O
                if model.cfg.parallel_attn_mlp:  # the MLP reads the block's input, not resid_mid
                    resid = resid + attn_out + block.mlp(block.ln2(resid))
                else:
                    resid = resid + attn_out
                    if not model.cfg.attn_only:
                        resid = resid + block.mlp(block.ln2(resid))
            logits = model.ln_final(resid) @ model.W_U
            logits = logits if model.b_U is None else logits + model.b_U
            losses = _losses(logits.flatten(0, 1), tokens.repeat(n, 1)).view(n, batch, -1)
            for i, head in enumerate(chunk):
                results[(layer, head)] = losses[i]
    return torch.stack([_losses(clean_logits, tokens), *(results[h] for h in heads)])


def _ablated_losses(model: Transformer, tokens: Tensor, cache, group: Sequence[tuple[int, int]], kind: str, pattern_preserving: bool) -> Tensor:
    """Per-token loss with every head in `group` ablated at once, by hooks, in one forward pass."""
    hooks = []
    for layer in sorted({l for l, _ in group}):
        in_layer = [h for l, h in group if l == layer]
        repl = _replacement(cache["z", layer], kind)

        def patch(z: Tensor, *, hook: HookPoint, in_layer: list[int] = in_layer, repl: Tensor = repl) -> Tensor:
            z = z.clone()
            z[:, :, in_layer] = repl[:, :, in_layer]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", patch))
    if pattern_preserving:
        hooks += [(f"blocks.{l}.attn.hook_pattern", lambda p, *, hook, l=l: cache["pattern", l])
                  for l in range(model.cfg.n_layers)]
    return _losses(model.run_with_hooks(tokens, fwd_hooks=hooks), tokens)


def _clean_cache(model: Transformer, tokens: Tensor):
    keep = lambda n: n.endswith("hook_z") or n.endswith("hook_pattern")  # noqa: E731
    return model.run_with_cache(tokens, names_filter=keep)


@torch.inference_mode()
def ablate_heads_serially(
    model: Transformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]] | None = None,
    kind: str = "zero", pattern_preserving: bool = True,
) -> Float[Tensor, "ablation batch pos_minus_1"]:
    """The same result as `ablate_heads`, one forward pass per head: the reference the batched
    sweep is tested and benchmarked against."""
    heads = list(all_heads(model) if heads is None else heads)
    clean_logits, cache = _clean_cache(model, tokens)
    return torch.stack([_losses(clean_logits, tokens),
                        *(_ablated_losses(model, tokens, cache, [h], kind, pattern_preserving) for h in heads)])


@torch.inference_mode()
def ablate_head_group(
    model: Transformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]],
    kind: str = "zero", pattern_preserving: bool = True,
) -> Float[Tensor, "2 batch pos_minus_1"]:
    """Per-token loss with all of `heads` ablated together (e.g. every induction head at once).

    Returns:
        [2, batch, pos-1]: row 0 clean, row 1 with the whole group ablated.

    Raises:
        ConfigError: an unknown kind, an empty group or a head the model does not have.
    """
    heads = list(heads)
    if not heads:
        raise ConfigError("ablate_head_group needs at least one (layer, head)")
    _check(model, heads, kind)
    tokens = tokens.to(next(model.parameters()).device)
    clean_logits, cache = _clean_cache(model, tokens)
    return torch.stack([_losses(clean_logits, tokens), _ablated_losses(model, tokens, cache, heads, kind, pattern_preserving)])
