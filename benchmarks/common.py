"""Shared helpers for the benchmarks: interleaved timing with medians, the matmul peak, FLOP counts
and a hook-free reference forward. Benchmarks compare against a peer *in the same run* and print
ratios, because the machine is shared and absolute times drift."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from icl_lab.model import ModelConfig, Transformer


def median_times(fns: dict[str, Callable[[], None]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each callable, interleaving them so drift hits all equally."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def train_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 3x the forward's matmul FLOPs (weights, unembedding and the two
    attention products over the full n_ctx square, no causal discount, as in the PaLM appendix)."""
    per_layer = 4 * cfg.d_model * cfg.n_heads * cfg.d_head + 2 * cfg.d_model * cfg.d_mlp
    weights = cfg.n_layers * per_layer + cfg.d_model * cfg.d_vocab
    attention = cfg.n_layers * 2 * cfg.n_ctx * cfg.n_heads * cfg.d_head
    return 3 * 2 * (weights + attention)


def bare_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The same model's forward with every hook point compiled out: the reference for hook
    overhead. Supports learned positions, LayerNorm or none, MLP or none (the presets' features)."""
    cfg = model.cfg
    assert cfg.positional == "learned" and not cfg.smeared_key and tokens.shape[1] == cfg.n_ctx, \
        "bare_forward covers the synthetic presets only"
    resid = F.embedding(tokens, model.W_E) + model.W_pos.expand(tokens.shape[0], -1, -1)
    for block in model.blocks:
        a = block.attn
        x = block.ln1(resid)
        W = torch.cat([a.W_Q, a.W_K, a.W_V])  # [3*head, d_model, d_head]
        h3, d, e = W.shape
        qkv = (x @ W.transpose(0, 1).reshape(d, h3 * e)).view(*x.shape[:2], h3, e)
        if a.b_Q is not None:
            qkv = qkv + torch.cat([a.b_Q, a.b_K, a.b_V])
        q, k, v = qkv.chunk(3, dim=2)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        h = h3 // 3
        out = z.transpose(1, 2).reshape(*x.shape[:2], h * e) @ a.W_O.reshape(h * e, d)
        resid = resid + (out if a.b_O is None else out + a.b_O)
        if not cfg.attn_only:
            m = block.mlp
            pre = block.ln2(resid) @ m.W_in
            post = m.act(pre if m.b_in is None else pre + m.b_in) @ m.W_out
            resid = resid + (post if m.b_out is None else post + m.b_out)
    logits = model.ln_final(resid) @ model.W_U
    return logits if model.b_U is None else logits + model.b_U
