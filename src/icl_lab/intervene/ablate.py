"""Head ablations, batched: every head of every layer ablated in a few batched passes.

Olsson et al. (2022), "In-context Learning and Induction Heads", Argument 3, ablate heads and
measure how much in-context learning disappears. A head is ablated by replacing its output
`z [batch, pos, head, d_head]` (at `blocks.{l}.attn.hook_z`) with

- zeros ("zero"),
- its mean over the evaluation examples, per position ("mean"), or
- its value on another example of the batch, example i taking example i+1's ("resample").

Two forms: **full**, where every later attention pattern recomputes, and **pattern-preserving**
(the paper's choice), where every attention pattern is forced to its value in the clean run, so
only the paths through values and the residual stream change. Instead of one forward pass per
head, the batch is repeated once per head and each copy ablates its own head, starting at that
head's layer from the clean run's cached residual stream, under `torch.inference_mode`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes, logits_bytes, rows_per_chunk
from icl_lab.model.hooks import HookPoint
from icl_lab.model.config import ModelConfig
from icl_lab.model.transformer import Transformer, select_rows

AblationKind = Literal["zero", "mean", "resample"]
COPY_TENSORS = 6  # copy-sized tensors alive at once in a sweep pass (residual, norm, values, z, output, MLP)
KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample")


def all_heads(model: Transformer) -> list[tuple[int, int]]:
    """Every (layer, head) of the model, layer by layer: the default set `ablate_heads` sweeps."""
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def _replacement(z: Tensor, kind: AblationKind) -> Tensor:
    if kind == "zero":
        return torch.zeros_like(z)
    if kind == "mean":
        return z.mean(0, keepdim=True).expand_as(z)
    if kind == "resample":
        return z.roll(-1, dims=0)
    raise ConfigError(f"unknown ablation kind {kind!r}; choose one of {', '.join(KINDS)}")


def _check(model: Transformer, heads: Sequence[tuple[int, int]], kind: str) -> None:  # validates any string
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
    kind: AblationKind = "zero",  # also checked at run time, so a typo gets a one-line error
    pattern_preserving: bool = True,
    positions: Tensor | Sequence[int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "ablation batch k"]:
    """Per-token loss with each head ablated in turn, in batched passes. The sequences are
    streamed in chunks whose clean cache takes at most half of `max_bytes`, and as many ablations
    share a pass as keep its tensors within the other half (larger passes spend their time
    allocating memory rather than computing). Each copy starts at its head's layer, and only the
    losses asked for are computed (see `_sweep`): scoring a few positions, as the ICL score does,
    is much cheaper than scoring every one.

    Args:
        model: the model.
        tokens: [batch, pos] evaluation sequences.
        heads: (layer, head) pairs to ablate, default every head.
        kind: "zero", "mean" or "resample".
        pattern_preserving: force every attention pattern to its clean value.
        positions: per-token-loss indices to score, [k] for every sequence or [batch, k] per
            sequence (index i is the loss of predicting tokens[:, i+1]); default all pos-1.

    Returns:
        [1 + len(heads), batch, k]: row 0 is the clean run, row 1+i has heads[i] ablated.

    Example:
        >>> early, late = icl_positions(tokens.shape[1])
        >>> losses = ablate_heads(model, tokens, positions=[early - 1, late - 1])
        >>> icl = losses[:, :, 1].mean(1) - losses[:, :, 0].mean(1)  # [1 + head]
    """
    heads = list(all_heads(model) if heads is None else heads)
    _check(model, heads, kind)
    tokens = tokens.to(next(model.parameters()).device)
    rows = _loss_rows(tokens, positions)
    layers = sorted({l for l, _ in heads})
    means = _mean_z(model, tokens, layers, max_bytes) if kind == "mean" and heads else {}
    itemsize = next(model.parameters()).element_size()
    cache_row = sweep_cache_bytes(model.cfg, tokens.shape[1], itemsize, layers, pattern_preserving)
    chunk = rows_per_chunk(cache_row, max_bytes // 2, len(tokens))
    out = []
    for i in range(0, len(tokens), chunk):
        idx = torch.arange(i, min(i + chunk, len(tokens)), device=tokens.device)
        # a resampled head takes the next sequence's z: that sequence rides along, unscored
        run_idx = torch.cat([idx, (idx[-1:] + 1) % len(tokens)]) if kind == "resample" and chunk < len(tokens) else idx
        replace = _replacer(kind, means, len(idx))
        out.append(_sweep(model, tokens[run_idx], heads, replace, pattern_preserving, rows[idx], max_bytes // 2))
    return torch.cat(out, dim=1)


def sweep_cache_bytes(cfg: ModelConfig, n_pos: int, itemsize: int, layers: Sequence[int], preserve: bool) -> int:
    """What a sweep caches per sequence (half of the `ablate_heads` budget goes to it): z,
    resid_mid and resid_post of the ablated layers, and the attention pattern of every layer after
    the first of them (pattern-preserving), plus the clean forward that fills the cache."""
    cached = 3 * len(layers) * n_pos * max(cfg.d_model, cfg.n_heads * cfg.d_head) * itemsize
    if preserve and layers:
        cached += (cfg.n_layers - 1 - layers[0]) * cfg.n_heads * n_pos * n_pos * itemsize
    return cached + forward_row_bytes(cfg, n_pos, itemsize, logits=False, patterns=preserve)


def _replacer(kind: AblationKind, means: dict[int, Tensor], n: int):
    """z -> what ablation puts in its place for the first `n` sequences: zeros, the mean over
    every sequence (from `_mean_z`), or the next sequence's z."""
    def replace(layer: int, z: Tensor) -> Tensor:  # z [batch (+1 riding along), pos, head, d_head]
        if kind == "zero":
            return torch.zeros_like(z[:n])
        if kind == "mean":
            return means[layer].expand_as(z[:n])
        return z.roll(-1, dims=0)[:n]
    return replace


def _loss_rows(tokens: Tensor, positions: Tensor | Sequence[int] | None) -> Tensor:
    """The per-token-loss indices to score, [batch, k]: index i is the loss of predicting
    tokens[:, i + 1], as in `per_token_loss`."""
    batch, n_pos = tokens.shape
    if positions is None:
        return torch.arange(n_pos - 1, device=tokens.device).expand(batch, -1)
    rows = torch.as_tensor(positions, dtype=torch.long, device=tokens.device)
    rows = rows.expand(batch, -1) if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[0] != batch:
        raise ConfigError(f"positions must be [k] or [batch={batch}, k], got shape {tuple(rows.shape)}")
    if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) <= n_pos - 2):
        raise ConfigError(f"positions index the per-token loss, so they must lie in 0..{n_pos - 2} for {n_pos}-token sequences")
    return rows


def _row_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of `logits [..., k, vocab]` against `targets [..., k]`: [..., k]."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)


def _sweep(model: Transformer, tokens: Tensor, heads: list[tuple[int, int]], replace, preserve: bool,
           rows: Tensor, max_bytes: int) -> Tensor:
    """One copy of the batch per head, starting at the head's own layer from the cached clean
    residual stream (nothing before it can change). Only the logits at `rows` are computed, for
    the first len(rows) sequences (a resampling sweep runs one more, whose z the last one takes).

    The model's own blocks run every pass (`Block.after_attention` after the ablated layer, then
    `Block.forward`), so a new model option needs no mirror here. Pattern-preserving copies pass
    the clean patterns (`pattern=`): no queries, keys, scores or softmax, the patterns broadcast
    over the copies, and in the last layer only the rows scored are mixed (`rows=`). The result
    equals the hook-based `ablate_heads_serially` (tested). Hooks attached to the model see the
    copies stacked along the batch dimension."""
    cfg, n_pos = model.cfg, tokens.shape[1]
    batch = len(rows)
    layers = sorted({l for l, _ in heads})
    wanted = {f"blocks.{l}.{name}" for l in layers for name in ("attn.hook_z", "hook_resid_pre", "hook_attn_out")}
    if preserve:  # patterns are read only downstream of an ablated head; earlier layers keep fused attention
        wanted |= {f"blocks.{j}.attn.hook_pattern" for j in range(layers[0] + 1, cfg.n_layers)} if layers else set()
    final, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted, stop_at_layer=cfg.n_layers)
    at = torch.arange(batch, device=tokens.device)[:, None]  # with rows: [batch, k] gathers
    targets = tokens[at, rows + 1]  # [batch, k]
    results = {}
    pos_embed = model.shortformer_pos(n_pos)
    width = max(cfg.d_model, cfg.d_mlp, 0 if preserve else cfg.n_heads * n_pos)  # a copy's widest activation per token
    per_copy = batch * max(n_pos * width, rows.shape[1] * cfg.d_vocab)  # ... or its logits, at the scored rows
    per_pass = max(1, max_bytes // (COPY_TENSORS * next(model.parameters()).element_size() * per_copy))
    for layer in layers:
        in_layer = [h for l, h in heads if l == layer]
        for start in range(0, len(in_layer), per_pass):
            chunk = in_layer[start : start + per_pass]
            resid = _ablated_layer(model, cache, layer, chunk, replace, batch, rows if layer == cfg.n_layers - 1 else None)
            for j in range(layer + 1, cfg.n_layers):  # resid [copy * batch, pos (k in the last layer), d_model]
                last = j == cfg.n_layers - 1
                if preserve:
                    resid = model.blocks[j](resid, pos_embed, pattern=cache["pattern", j][:batch], rows=rows if last else None)
                else:
                    resid = model.blocks[j](resid, pos_embed)
                    resid = select_rows(resid, rows) if last else resid
            logits = model.unembed(resid).unflatten(0, (len(chunk), batch))  # [copy, batch, k, vocab]
            results.update(zip(((layer, h) for h in chunk), _row_losses(logits, targets.expand(len(chunk), -1, -1))))
    clean = _row_losses(model.unembed(final[at, rows]), targets)
    return torch.stack([clean, *(results[h] for h in heads)])


def _ablated_layer(model: Transformer, cache, layer: int, chunk: list[int], replace, batch: int,
                   rows: Tensor | None) -> Tensor:
    """resid_post of `layer` with head chunk[i] ablated in copy i: [copy * batch, pos, d_model],
    or [copy * batch, k, d_model] at `rows` only. The head's pattern and the other heads are
    untouched by its ablation, so the attention output changes by the head's output difference
    alone (a rank-d_head term); the block's own `after_attention` adds the MLP and the residual."""
    z = cache["z", layer]
    dz = (replace(layer, z) - z[:batch])[:, :, chunk]  # [batch, pos, copy, d_head]
    resid_pre, attn_out = cache["resid_pre", layer][:batch], cache["attn_out", layer][:batch]  # [batch, pos, d_model]
    if rows is not None:  # the last layer: only the scored rows go on to the MLP and the logits
        at = torch.arange(batch, device=rows.device)[:, None]
        dz, resid_pre, attn_out = dz[at, rows], resid_pre[at, rows], attn_out[at, rows]
    delta = torch.einsum("bpne,ned->nbpd", dz, model.blocks[layer].attn.W_O[chunk])  # [copy, batch, pos, d_model]
    # resid_pre broadcasts over the copies: a parallel block's MLP, which reads it, runs once
    return model.blocks[layer].after_attention(resid_pre[None], attn_out[None] + delta).flatten(0, 1)


def _ablated_losses(model: Transformer, tokens: Tensor, cache, group: Sequence[tuple[int, int]], kind: AblationKind,
                    pattern_preserving: bool) -> Tensor:
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
    return model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern")))


@torch.inference_mode()
def ablate_heads_serially(
    model: Transformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]] | None = None,
    kind: AblationKind = "zero", pattern_preserving: bool = True, positions: Tensor | Sequence[int] | None = None,
) -> Float[Tensor, "ablation batch k"]:
    """The same result as `ablate_heads`, one full forward pass per head: the reference the
    batched sweep is tested and benchmarked against."""
    heads = list(all_heads(model) if heads is None else heads)
    rows = _loss_rows(tokens, positions)
    clean_logits, cache = _clean_cache(model, tokens)
    losses = torch.stack([_losses(clean_logits, tokens),
                          *(_ablated_losses(model, tokens, cache, [h], kind, pattern_preserving) for h in heads)])
    return losses[:, torch.arange(len(tokens))[:, None], rows]


@torch.inference_mode()
def ablate_head_group(
    model: Transformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]],
    kind: AblationKind = "zero", pattern_preserving: bool = True, positions: Tensor | Sequence[int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "2 batch k"]:
    """Per-token loss with all of `heads` ablated together (e.g. every induction head at once),
    streamed over chunks of sequences whose clean and ablated copies fit `max_bytes`.

    Each chunk runs once up to the group's first layer; from there a clean and an ablated copy
    of it run side by side through the model's own blocks, with the group's `hook_z` replaced in
    the ablated copy. Pattern-preserving copies take the clean copy's queries and keys at every
    later layer (`hook_q`, `hook_k`), so their attention patterns are the clean ones while the
    fused attention kernel still runs: no layer's pattern is ever stored.

    Args:
        positions: per-token-loss indices to score, as in `ablate_heads` (default every one).

    Returns:
        [2, batch, k]: row 0 clean, row 1 with the whole group ablated.

    Raises:
        ConfigError: an unknown kind, an empty group or a head the model does not have.
    """
    heads = list(heads)
    if not heads:
        raise ConfigError("ablate_head_group needs at least one (layer, head)")
    _check(model, heads, kind)
    tokens = tokens.to(next(model.parameters()).device)
    rows = _loss_rows(tokens, positions)
    group = {layer: [h for l, h in heads if l == layer] for layer in sorted({l for l, _ in heads})}
    means = _mean_z(model, tokens, list(group), max_bytes) if kind == "mean" else {}
    cfg, itemsize = model.cfg, next(model.parameters()).element_size()
    per_row = 2 * forward_row_bytes(cfg, tokens.shape[1], itemsize, logits=False) + 2 * logits_bytes(cfg, rows.shape[1], itemsize)
    chunk = rows_per_chunk(per_row, max_bytes, len(tokens))
    out = [_group_chunk(model, tokens, rows, torch.arange(i, min(i + chunk, len(tokens))), group, kind, means, pattern_preserving)
           for i in range(0, len(tokens), chunk)]
    return torch.cat(out, dim=1)


def _group_chunk(model: Transformer, tokens: Tensor, rows: Tensor, idx: Tensor, group: dict[int, list[int]], kind: AblationKind,
                 means: dict[int, Tensor], preserve: bool) -> Tensor:
    """[2, chunk, k] clean and group-ablated losses of the sequences `idx`. A resampled head takes
    the next sequence's z (the last takes the first's), so that sequence rides along, unscored."""
    n, first = len(idx), min(group)
    clean_idx = torch.cat([idx, ((idx[-1:] + 1) % len(tokens))]) if kind == "resample" else idx
    resid = model(tokens[clean_idx], stop_at_layer=first)  # [clean, pos, d_model]
    nc = len(clean_idx)

    def same_as_clean(x: Tensor, *, hook) -> Tensor:  # q or k [2 copies, pos, head, d_head]
        return torch.cat([x[:nc], x[:n]])

    def ablate(z: Tensor, *, hook) -> Tensor:  # z [2 copies, pos, head, d_head]
        layer, heads = int(hook.name.split(".")[1]), group[int(hook.name.split(".")[1])]
        z = z.clone()
        if kind == "zero":
            z[nc:, :, heads] = 0
        elif kind == "mean":
            z[nc:, :, heads] = means[layer][:, heads]
        else:
            z[nc:, :, heads] = z[1 : n + 1, :, heads]
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate) for layer in group]
    if preserve:
        hooks += [(f"blocks.{l}.attn.{name}", same_as_clean) for l in range(first + 1, model.cfg.n_layers) for name in ("hook_q", "hook_k")]
    final = model.run_with_hooks(torch.cat([resid, resid[:n]]), fwd_hooks=hooks, start_at_layer=first,
                                 stop_at_layer=model.cfg.n_layers)  # [clean + ablated, pos, d_model]
    at = torch.arange(n, device=tokens.device)[:, None]
    sel = rows[idx]  # [chunk, k]
    picked = torch.stack([final[:n][at, sel], final[nc:][at, sel]])  # [2, chunk, k, d_model]
    logits = model.ln_final(picked) @ model.W_U
    logits = logits if model.b_U is None else logits + model.b_U
    return _row_losses(logits, tokens[idx][at, sel + 1].expand(2, -1, -1))


def _mean_z(model: Transformer, tokens: Tensor, layers: list[int], max_bytes: int) -> dict[int, Tensor]:
    """Each layer's z averaged over every sequence, per position: [pos, head, d_head] (what mean
    ablation puts in), summed chunk by chunk."""
    sums: dict[int, Tensor] = {}

    def add(z: Tensor, *, hook) -> None:
        layer = int(hook.name.split(".")[1])
        sums[layer] = sums.get(layer, 0) + z.sum(0)

    chunk = rows_per_chunk(forward_row_bytes(model.cfg, tokens.shape[1], next(model.parameters()).element_size(), logits=False),
                           max_bytes, len(tokens))
    for i in range(0, len(tokens), chunk):
        model.run_with_hooks(tokens[i : i + chunk], stop_at_layer=max(layers) + 1,
                             fwd_hooks=[(f"blocks.{layer}.attn.hook_z", add) for layer in layers])
    return {layer: total / len(tokens) for layer, total in sums.items()}
