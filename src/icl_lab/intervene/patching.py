"""Activation patching and path patching, batched: every patched cell is one copy of the batch in
a single forward pass (chunked to bound memory), under `torch.inference_mode`.

**Activation patching** (Meng et al. 2022; Wang et al. 2022) runs the model on a corrupted input
with one activation — the residual stream at one (layer, position), one head's output, or one
head's output at one position — taken from the clean run, and reports a metric for each cell;
cells that restore the clean behaviour carry it. **Path patching** isolates one edge: the
sender head's output changes (to its value on the corrupted input) only as seen by the receiver
head's query, key or value input, all else clean. This is how the previous-token head -> induction
head K-composition is shown causally."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.measure.memory import DEFAULT_MAX_BYTES
from icl_lab.model.hooks import HookPoint
from icl_lab.model.transformer import Transformer

Metric = Callable[[Tensor, Tensor], Tensor]  # (logits [batch, pos, d_vocab], tokens [batch, pos]) -> [batch]


def _on_model(model: Transformer, *tokens: Tensor) -> tuple[Tensor, ...]:
    """The token tensors moved to the model's device (a model on a GPU takes CPU tokens)."""
    device = model.W_E.device
    return tuple(t.to(device) for t in tokens)


def _run_cells(model: Transformer, tokens: Tensor, n_cells: int, make_hooks, metric: Metric, max_bytes: int) -> Tensor:
    """Evaluate `n_cells` patched copies of `tokens`, `make_hooks(start, stop)` giving the hooks for
    cells [start, stop); returns the metric averaged over the batch, [n_cells]."""
    batch, n_pos = tokens.shape
    itemsize = next(model.parameters()).element_size()
    per_pass = max(1, max_bytes // (batch * n_pos * max(model.cfg.d_model, model.cfg.d_vocab) * itemsize))
    out = []
    for start in range(0, n_cells, per_pass):
        stop = min(n_cells, start + per_pass)
        reps = tokens.repeat(stop - start, 1)
        logits = model.run_with_hooks(reps, fwd_hooks=make_hooks(start, stop))
        out.append(metric(logits, reps).view(stop - start, batch).mean(1))
    return torch.cat(out)


@torch.inference_mode()
def patch_residual(
    model: Transformer, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], metric: Metric,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "layer pos"]:
    """The metric on the corrupted input with `blocks.{l}.hook_resid_pre` at one position taken
    from the clean run, for every (layer, position)."""
    clean, corrupted = _on_model(model, clean, corrupted)
    L, P = model.cfg.n_layers, clean.shape[1]
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))

    def hooks(start: int, stop: int):
        cells = torch.arange(start, stop)
        out = []
        for l in range(L):
            mine = cells[cells // P == l]
            if len(mine) == 0:
                continue

            def patch(x: Tensor, *, hook: HookPoint, mine=mine, l=l) -> Tensor:
                x = x.view(stop - start, -1, *x.shape[1:]).clone()  # [copy, batch, pos, d_model]
                copies, pos = mine - start, mine % P
                x[copies, :, pos] = cache["resid_pre", l][:, pos].transpose(0, 1)
                return x.flatten(0, 1)

            out.append((f"blocks.{l}.hook_resid_pre", patch))
        return out

    return _run_cells(model, corrupted, L * P, hooks, metric, max_bytes).view(L, P)


@torch.inference_mode()
def patch_heads(
    model: Transformer, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], metric: Metric,
    per_position: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "layer head *pos"]:
    """The metric on the corrupted input with one head's output `hook_z` taken from the clean run,
    for every head ([layer, head]) or every head and position ([layer, head, pos])."""
    clean, corrupted = _on_model(model, clean, corrupted)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    per = P if per_position else 1
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))

    def hooks(start: int, stop: int):
        cells = torch.arange(start, stop)
        out = []
        for l in range(L):
            mine = cells[cells // (H * per) == l]
            if len(mine) == 0:
                continue

            def patch(z: Tensor, *, hook: HookPoint, mine=mine, l=l) -> Tensor:
                z = z.view(stop - start, -1, *z.shape[1:]).clone()  # [copy, batch, pos, head, d_head]
                copies, head = mine - start, (mine // per) % H
                src = cache["z", l]  # [batch, pos, head, d_head]
                if per_position:
                    pos = mine % P
                    z[copies, :, pos, head] = src[:, pos, head].transpose(0, 1)
                else:
                    z[copies, :, :, head] = src[:, :, head].permute(2, 0, 1, 3)
                return z.flatten(0, 1)

            out.append((f"blocks.{l}.attn.hook_z", patch))
        return out

    result = _run_cells(model, corrupted, L * H * per, hooks, metric, max_bytes)
    return result.view(L, H, P) if per_position else result.view(L, H)


@torch.inference_mode()
def path_patch(
    model: Transformer, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
    sender: tuple[int, int], receiver: tuple[int, int], metric: Metric, via: tuple[str, ...] = ("q", "k", "v"),
) -> dict[str, float]:
    """Path patching from `sender` (layer, head) into `receiver`'s query, key or value input.

    For each input in `via`, the clean run is repeated with only the receiver head's q, k or v
    recomputed from its clean input plus (sender output on `corrupted` - sender output on
    `clean`); everything downstream recomputes. Returns the metric for each path and for the
    unpatched clean and corrupted runs ("clean", "corrupted").
    """
    (ls, hs), (lr, hr) = sender, receiver
    if not ls < lr:
        raise ConfigError(f"path patching needs the sender in an earlier layer: got L{ls}H{hs} -> L{lr}H{hr}")
    if any(v not in ("q", "k", "v") for v in via):
        raise ConfigError(f"via must name q, k or v inputs; got {via}")
    clean, corrupted = _on_model(model, clean, corrupted)
    keep = lambda n: n in (f"blocks.{ls}.attn.hook_z", f"blocks.{lr}.hook_resid_pre")  # noqa: E731
    clean_logits, cache = model.run_with_cache(clean, names_filter=keep)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupted, names_filter=keep)
    W_O = model.blocks[ls].attn.W_O[hs]
    delta = (corrupt_cache["z", ls][:, :, hs] - cache["z", ls][:, :, hs]) @ W_O  # [batch, pos, d_model]
    block = model.blocks[lr]
    q_in, k_in, v_in = block.attn_inputs(cache["resid_pre", lr] + delta, model.shortformer_pos(clean.shape[1]))
    inputs = {"q": q_in, "k": k_in, "v": v_in}
    n = len(via)
    hooks = []
    for i, which in enumerate(via):
        new = block.attn.head_projection(inputs[which], which, hr)  # [batch, pos, d_head]

        def patch(act: Tensor, *, hook: HookPoint, i=i, new=new) -> Tensor:
            act = act.view(n, -1, *act.shape[1:]).clone()
            act[i, :, :, hr] = new
            return act.flatten(0, 1)

        hooks.append((f"blocks.{lr}.attn.hook_{which}", patch))
    reps = clean.repeat(n, 1)
    values = metric(model.run_with_hooks(reps, fwd_hooks=hooks), reps).view(n, -1).mean(1)
    out = {which: float(v) for which, v in zip(via, values)}
    out["clean"] = float(metric(clean_logits, clean).mean())
    out["corrupted"] = float(metric(corrupt_logits, corrupted).mean())
    return out


def attention_pattern_json(model: Transformer, tokens: Int[Tensor, "pos"], layer: int, str_tokens: list[str] | None = None) -> dict:
    """One sequence's attention in layer `layer` in CircuitsVis's `attention_patterns` input
    format: `{"tokens": [str, ...], "attention": [head][dest][src]}`."""
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None], names_filter=f"blocks.{layer}.attn.hook_pattern")
    pattern = cache["pattern", layer][0]  # [head, dest, src]
    names = str_tokens if str_tokens is not None else [str(t) for t in tokens.tolist()]
    if len(names) != len(tokens):
        raise ConfigError(f"str_tokens has {len(names)} entries for {len(tokens)} tokens; pass one string per token")
    return {"tokens": names, "attention": pattern.tolist()}
