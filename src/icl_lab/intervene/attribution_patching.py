"""Attribution patching: activation patching estimated from gradients, every cell at once.

Activation patching (`icl_lab.intervene.patching`) runs the corrupted input once per cell with
that cell's activation taken from the clean run. Attribution patching (Nanda 2023, "Attribution
Patching: Activation Patching At Industrial Scale"; AtP in Kramár et al. 2024) replaces those runs
with a first-order Taylor expansion around the corrupted run: for an activation `a`,

    metric(corrupted, a <- a_clean) ~ metric(corrupted) + (a_clean - a_corrupted) . dmetric/da

so one forward pass on the clean input (to record `a_clean`) and one forward and one backward pass
on the corrupted input give the estimate for every head and every (layer, position) together. The
estimate is exact where the metric is linear in the activation (a last-layer head's output under a
logit difference, or any activation of a model whose attention is fixed) and fails where it is not:
a saturated softmax downstream of the patched activation has a near-zero gradient, so a head whose
effect runs through a later head's sharp attention (the previous-token head feeding an induction
head's keys) is under-estimated: the false negatives Kramár et al. describe (their AtP* QK fix
recomputes a head's *own* attention for patched queries and keys, so it does not apply to these
nodes). `steps > 1` averages the gradient along the straight line from the corrupted to the clean
input embedding (integrated gradients, as in Hanna et al. 2024's EAP-IG), at one forward and
backward per step; in docs/benchmarks.md it improves the residual-stream ranking but not the
heads'. The results have activation patching's shapes (`patch_heads`, `patch_residual`), so the
two compare cell by cell. Pure functions of a model and tokens; after `measure` in the flow
data -> model -> train -> run -> measure -> intervene."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.intervene.patching import Metric, _on_model
from icl_lab.model.hooks import HookPoint
from icl_lab.model.transformer import Transformer


def _check(clean: Tensor, corrupted: Tensor, steps: int) -> None:
    if clean.shape != corrupted.shape:
        raise ConfigError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} tokens differ in shape; "
                          "pass two [batch, pos] tensors of one shape")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1 (1 is plain attribution patching); got {steps}")
    if torch.is_inference_mode_enabled():
        raise ConfigError("attribution patching needs gradients; call it outside torch.inference_mode()")


def _gradients(
    model: Transformer, clean: Tensor, corrupted: Tensor, metric: Metric, names: Sequence[str], steps: int,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The corrupted run's mean metric, and for each hook name the clean-minus-corrupted activation
    and the gradient of the mean metric with respect to it (averaged over `steps` points between
    the corrupted and clean input embeddings).

    Returns:
        (metric [] on the corrupted input, {name: delta [batch, ...]}, {name: grad [batch, ...]}).
    """
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=list(names) + ["hook_embed"])
    clean_embed = clean_cache["hook_embed"]  # [batch, pos, d_model]
    deltas: dict[str, Tensor] = {}
    grads = {name: torch.zeros_like(clean_cache[name]) for name in names}
    base = torch.zeros(())
    for step in range(steps):
        alpha = step / steps
        leaves: dict[str, Tensor] = {}

        def interpolate(x: Tensor, *, hook: HookPoint) -> Tensor:
            return x + alpha * (clean_embed - x.detach())

        def grab(x: Tensor, *, hook: HookPoint) -> Tensor:
            leaf = torch.zeros_like(x, requires_grad=True)  # d metric / d leaf = d metric / d x
            leaves[hook.name] = leaf
            if step == 0:
                deltas[hook.name] = clean_cache[hook.name] - x.detach()
            return x + leaf

        hooks = ([("hook_embed", interpolate)] if alpha else []) + [(name, grab) for name in names]
        with torch.enable_grad():
            logits = model.run_with_hooks(corrupted, fwd_hooks=hooks)
            value = metric(logits, corrupted).mean()
            found = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
        if step == 0:
            base = value.detach()
        for name, grad in zip(names, found):
            if grad is not None:
                grads[name] += grad / steps
    return base, deltas, grads


def attribution_patch_heads(
    model: Transformer, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], metric: Metric,
    per_position: bool = False, steps: int = 1,
) -> Float[Tensor, "layer head *pos"]:
    """The estimated metric on the corrupted input with one head's output `hook_z` taken from the
    clean run, for every head ([layer, head]) or every head and position ([layer, head, pos]):
    `patch_heads`'s result, from one forward and backward pass instead of one per head.

    Args:
        model: the model; its parameters need not require gradients.
        clean, corrupted: token ids of one shape, [batch, pos].
        metric: `(logits [batch, pos, d_vocab], tokens [batch, pos]) -> [batch]`, averaged over the batch.
        per_position: estimate each (head, position) cell instead of each head at every position.
        steps: gradient points between the corrupted and clean embeddings (1: plain attribution
            patching, one backward pass; more: integrated gradients, one pass each).

    Returns:
        [layer, head] or [layer, head, pos]: metric(corrupted) + sum((z_clean - z_corrupted) * grad).

    Raises:
        ConfigError: the token shapes differ, `steps < 1`, or it is called under inference mode.

    Example:
        >>> est = attribution_patch_heads(model, clean, corrupted, metric)   # [layer, head]
    """
    _check(clean, corrupted, steps)
    clean, corrupted = _on_model(model, clean, corrupted)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    base, deltas, grads = _gradients(model, clean, corrupted, metric, names, steps)
    per_layer = []
    for name in names:
        effect = (deltas[name] * grads[name]).sum(-1).sum(0)  # [pos, head]
        per_layer.append(effect.T if per_position else effect.sum(0))
    return (base + torch.stack(per_layer)).detach()


def attribution_patch_residual(
    model: Transformer, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], metric: Metric,
    steps: int = 1,
) -> Float[Tensor, "layer pos"]:
    """The estimated metric on the corrupted input with `blocks.{l}.hook_resid_pre` at one
    position taken from the clean run, for every (layer, position): `patch_residual`'s result
    from one forward and backward pass.

    Args:
        model: the model.
        clean, corrupted: token ids of one shape, [batch, pos].
        metric: `(logits [batch, pos, d_vocab], tokens [batch, pos]) -> [batch]`, averaged over the batch.
        steps: as in `attribution_patch_heads`.

    Returns:
        [layer, pos]: metric(corrupted) + sum over batch and d_model of (resid_clean - resid_corrupted) * grad.

    Raises:
        ConfigError: the token shapes differ, `steps < 1`, or it is called under inference mode.

    Example:
        >>> est = attribution_patch_residual(model, clean, corrupted, metric)   # [layer, pos]
    """
    _check(clean, corrupted, steps)
    clean, corrupted = _on_model(model, clean, corrupted)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    base, deltas, grads = _gradients(model, clean, corrupted, metric, names, steps)
    effect = torch.stack([(deltas[n] * grads[n]).sum(-1).sum(0) for n in names])  # [layer, pos]
    return (base + effect).detach()


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 of x's elements, flattened; tied elements share their mean rank."""
    x = x.detach().flatten().double().cpu()
    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(len(x), dtype=torch.double)
    _, group, counts = torch.unique(x, return_inverse=True, return_counts=True)
    return (torch.zeros(len(counts), dtype=torch.double).index_add_(0, group, ranks) / counts)[group]


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors, flattened (tied values share their
    mean rank): how well attribution patching orders the cells that activation patching orders.

    Args:
        a, b: tensors of one shape with at least two elements.

    Returns:
        A float in [-1, 1]; NaN when either tensor is constant.

    Raises:
        ConfigError: the shapes differ or there are fewer than two elements.

    Example:
        >>> rank_correlation(patch_heads(m, c, x, f), attribution_patch_heads(m, c, x, f))
    """
    if a.shape != b.shape or a.numel() < 2:
        raise ConfigError(f"rank correlation needs two tensors of one shape with 2+ elements; got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = (r - r.mean() for r in (_ranks(a), _ranks(b)))
    if float(ra.norm()) == 0 or float(rb.norm()) == 0:
        return float("nan")
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))
