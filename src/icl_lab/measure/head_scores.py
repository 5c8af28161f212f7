"""Attention-pattern scores for every head, as defined by Olsson et al. (2022), "In-context
Learning and Induction Heads", section "Key Concepts" and the Model Analysis Table.

Each score is computed for all layers and heads from one cached forward pass, under
`torch.inference_mode()`, and returned as a `[layer, head]` tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes, rows_per_chunk
from icl_lab.model.transformer import Transformer


def repeated_random_tokens(
    d_vocab: int,
    n_ctx: int,
    seg_len: int = 25,
    n_repeats: int = 4,
    n_examples: int = 10,
    seed: int = 0,
    exclude: Sequence[int] = (0,),
    bos: int | None = 0,
) -> tuple[Int[Tensor, "example pos"], int]:
    """Sequences `[BOS] s s s s` of a random segment `s` of distinct tokens repeated `n_repeats` times.

    The segment shrinks to fit the context (`seg_len = min(seg_len, (n_ctx - 1) // n_repeats)`).

    Args:
        exclude: token ids never drawn (BOS; the paper also drops the most and least common).

    Returns:
        tokens [example, 1 + seg_len * n_repeats] (no BOS column if `bos` is None), and the
        segment length actually used.
    """
    first = 0 if bos is None else 1
    seg_len = min(seg_len, (n_ctx - first) // n_repeats)
    excluded = set(exclude)  # once: rebuilding it per token took ~7 s at a 49k vocabulary
    allowed = torch.tensor([t for t in range(d_vocab) if t not in excluded])
    if seg_len < 2 or len(allowed) < seg_len:
        raise ConfigError(
            f"cannot build {n_repeats} repeats of a distinct-token segment in n_ctx={n_ctx}, d_vocab={d_vocab}; "
            "lower n_repeats or use a larger model"
        )
    gen = torch.Generator().manual_seed(seed)
    segs = torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:seg_len]] for _ in range(n_examples)])
    tokens = segs.repeat(1, n_repeats)
    if bos is not None:
        tokens = torch.cat([torch.full((n_examples, 1), bos), tokens], dim=1)
    return tokens, seg_len


def _earlier_copy_mask(n_pos: int, seg_len: int, first: int, shift: int) -> Float[Tensor, "query_pos key_pos"]:
    # keys at q - m*seg_len + shift for m >= 1, for queries past the first repeat
    q = torch.arange(n_pos)[:, None]
    k = torch.arange(n_pos)[None, :]
    rel = q - k + shift  # == m * seg_len for a target
    return ((rel > 0) & (rel % seg_len == 0) & ((q - first) >= seg_len) & (k >= first)).float()


def prefix_matching_mask(n_pos: int, seg_len: int, first: int = 1) -> Float[Tensor, "query_pos key_pos"]:
    """1 where key_pos holds the token that *followed* an earlier copy of query_pos's token.

    For a query at position p in repeat k >= 1, the earlier copies sit at p - m*seg_len and the
    tokens after them at p - m*seg_len + 1, for m = 1..k. Rows of the first repeat are all zero.
    """
    return _earlier_copy_mask(n_pos, seg_len, first, shift=1)


def duplicate_token_mask(n_pos: int, seg_len: int, first: int = 1) -> Float[Tensor, "query_pos key_pos"]:
    """1 where key_pos holds an earlier copy of query_pos's token in a repeated sequence."""
    return _earlier_copy_mask(n_pos, seg_len, first, shift=0)


@torch.inference_mode()
def attention_patterns(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head query_pos key_pos"]:
    """Every layer's attention pattern on `tokens`, stacked over layers."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return cache.layers("pattern")


@torch.inference_mode()
def masked_pattern_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"], mask: Float[Tensor, "query_pos key_pos"],
    max_bytes: int = DEFAULT_MAX_BYTES, per_example: bool = False,
) -> Float[Tensor, "layer head"] | Float[Tensor, "batch layer head"]:
    """`masked_attention_score` without keeping the patterns: each layer's pattern is reduced as
    it is computed (only at the mask's non-zero entries), as many sequences at a time as keep one
    layer's explicit attention under `max_bytes` (`icl_lab.measure.memory.forward_row_bytes`), and
    the forward stops after the last block (no logits are formed). With `per_example`, each
    sequence's score: [batch, layer, head]."""
    out, _ = losses_and_pattern_scores(model, tokens, mask, len(tokens), max_bytes, losses=False)
    return out if per_example else out.mean(0)


@torch.inference_mode()
def losses_and_pattern_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"], mask: Float[Tensor, "query_pos key_pos"], n_scored: int,
    max_bytes: int = DEFAULT_MAX_BYTES, losses: bool = True,
) -> tuple[Float[Tensor, "scored layer head"], Float[Tensor, "batch pos_minus_1"] | None]:
    """One streamed forward over `tokens` that yields the masked pattern score of every head on the
    first `n_scored` sequences ([scored, layer, head], as `masked_pattern_scores` per example) and,
    with `losses`, the per-token loss of every sequence (as `per_token_losses`). Only the scored
    sequences take the explicit attention path; the rest run fused. So the evaluation windows'
    loss pass gives the previous-token score on its first windows for the price of their patterns."""
    device = next(model.parameters()).device
    mask = mask.to(device)
    qi, ki = mask.nonzero(as_tuple=True)
    weight, n_rows = mask[qi, ki], max(1, int((mask.sum(-1) > 0).sum()))
    itemsize, cfg = next(model.parameters()).element_size(), model.cfg
    scores = torch.zeros(n_scored, cfg.n_layers, cfg.n_heads)
    per_token = []
    total = len(tokens) if losses else n_scored
    start = 0
    while start < total:
        explicit = start < n_scored
        row = forward_row_bytes(cfg, tokens.shape[1], itemsize, logits=losses, patterns=explicit)
        stop = min(start + rows_per_chunk(row, max_bytes, total), n_scored if explicit else total)

        def reduce(pattern: Tensor, *, hook, start: int = start) -> None:  # pattern [batch, head, query_pos, key_pos]
            # the mean over the mask's rows of each row's masked sum: the masked entries' sum / rows
            scores[start : start + len(pattern), int(hook.name.split(".")[1])] = \
                ((pattern[:, :, qi, ki] * weight).sum(-1) / n_rows).float().cpu()

        hooks = [(lambda n: n.endswith("attn.hook_pattern"), reduce)] if explicit else []
        with model.hooks(hooks):
            chunk = tokens[start:stop].to(device)
            if losses:
                per_token.append(model.per_token_loss(chunk).cpu())
            else:
                model(chunk, stop_at_layer=cfg.n_layers)
        start = stop
    return scores, torch.cat(per_token) if losses else None


def prefix_matching_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"] | None = None, seg_len: int | None = None, seed: int = 0
) -> Float[Tensor, "layer head"]:
    """Prefix-matching score of every head (Olsson et al. 2022, "Key Concepts"): on repeated random
    tokens, the attention from each token in a later repeat to the tokens that followed its
    earlier occurrences, summed over those occurrences and averaged over tokens and examples.

    A perfect induction head scores 1; attention anywhere else lowers it.

    Args:
        model: the model to score.
        tokens: repeated sequences with a BOS column; default `repeated_random_tokens(...)`.
        seg_len: the repeat period of `tokens` (required when `tokens` is given).
    """
    return _repeated_score(model, tokens, seg_len, seed, prefix_matching_mask, "prefix_matching_scores")


def _repeated_score(model: Transformer, tokens: Tensor | None, seg_len: int | None, seed: int, mask_fn, name: str) -> Tensor:
    if tokens is None:
        tokens, seg_len = repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, seed=seed)
    elif seg_len is None:
        raise ConfigError(f"{name} needs seg_len with explicit tokens; pass the repeat period")
    return masked_pattern_scores(model, tokens, mask_fn(tokens.shape[1], seg_len))


def masked_attention_score(
    patterns: Float[Tensor, "layer batch head query_pos key_pos"], mask: Float[Tensor, "query_pos key_pos"]
) -> Float[Tensor, "layer head"]:
    """Attention falling on `mask`'s keys, summed over keys and averaged over the queries that
    have any masked key and over the batch. Works on patterns from any source (e.g. a
    TransformerLens cache), which is how the scores are cross-checked."""
    mask = mask.to(patterns)
    rows = mask.sum(-1) > 0
    return (patterns * mask).sum(-1)[..., rows].mean(dim=(1, 3)).cpu()


def duplicate_token_scores(
    model: Transformer, tokens: Int[Tensor, "batch pos"] | None = None, seg_len: int | None = None, seed: int = 0
) -> Float[Tensor, "layer head"]:
    """Duplicate-token score of every head: on repeated random tokens, the attention from each
    token in a later repeat to the earlier copies *of the same token*, summed over copies and
    averaged over tokens and examples (the duplicate-token heads of Wang et al. 2022, scored the
    way Olsson et al. score prefix matching). A perfect duplicate-token head scores 1."""
    return _repeated_score(model, tokens, seg_len, seed, duplicate_token_mask, "duplicate_token_scores")


def previous_token_scores(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Previous-token score of every head: mean attention from position i to i-1 over i >= 1.
    A perfect previous-token head scores 1."""
    return masked_pattern_scores(model, tokens, previous_token_mask(tokens.shape[1]))


def previous_token_mask(n_pos: int) -> Float[Tensor, "query_pos key_pos"]:
    """1 at (i, i-1) for i >= 1."""
    return torch.ones(n_pos - 1).diag(-1)
