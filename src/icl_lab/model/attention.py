"""Multi-head causal self-attention with TransformerLens's weight orientation and hook names.

Weights are stored the way they are analysed: `W_Q, W_K, W_V [head, d_model, d_head]` and
`W_O [head, d_head, d_model]`, inputs multiplying on the right. Attention takes PyTorch's fused
`scaled_dot_product_attention` unless a hook wants the scores or the pattern, which the fused
kernel never builds; both paths compute the same maths, and both honour a padding mask (a left-padded
batch: real tokens never attend to padding, and positions count from each row's first real token)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icl_lab.model.config import ModelConfig
from icl_lab.model.hooks import HookPoint
from icl_lab.model.init import matrix, zeros


def rotary_tables(n_ctx: int, dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables [pos, dim] for GPT-NeoX-style (rotate-half) rotary embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64), inv_freq)  # [pos, dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [batch, pos, head, d_head] by position; cos/sin are [pos, rotary_dim] (or
    [batch, pos, rotary_dim] for per-row positions). Only the first rotary_dim dimensions turn
    (partial rotary, as GPT-NeoX); the rest pass through."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :r], cos, sin), x[..., r:]], dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)


def smear_keys(k: Tensor, alpha: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Smeared keys: k_j <- sigmoid(a) k_j + (1 - sigmoid(a)) k_{j-1}; the first key is unchanged.

    Args:
        k: [batch, pos, head, d_head] keys.
        alpha: [head] one logit per head.
        key_mask: optional [batch, pos] bool, False at padding: a key after padding is a row's
            first and stays unchanged, as it would without the padding.
    """
    gate = torch.sigmoid(alpha)[:, None]  # [head, 1]
    smeared = gate * k[:, 1:] + (1 - gate) * k[:, :-1]
    if key_mask is not None:
        smeared = torch.where(key_mask[:, :-1, None, None], smeared, k[:, 1:])
    return torch.cat([k[:, :1], smeared], dim=1)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """The boolean attention mask [batch, 1, query_pos, key_pos] of a padded batch: causal, with
    padding keys masked. Each position may always attend to itself, so a padding query keeps one
    key and its softmax stays finite (its output is never read by a real token).

    Args:
        attention_mask: [batch, pos], 1 (or True) at real tokens, 0 at padding.
    """
    n_pos = attention_mask.shape[-1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=attention_mask.device).tril()
    keys = attention_mask.bool()[:, None, None, :] | torch.eye(n_pos, dtype=torch.bool, device=attention_mask.device)
    return causal & keys


class LayerKV:
    """One layer's keys and values of the tokens seen so far, for incremental decoding.

    Attributes:
        k, v: [batch, head, pos, d_head] (keys rotated, as attended with), or None before the
            first step.
        raw_k: [batch, 1, head, d_head], the last key before smearing (smeared keys mix it into
            the next one), or None.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.raw_k: Tensor | None = None


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that `generate` runs each new
    token alone instead of the whole sequence. Pass one to the model's forward as `kv_cache`: it
    appends the new tokens' keys and values and advances `n_pos`.

    Example:
        >>> cache = KVCache(model.cfg.n_layers)
        >>> model(prompt, kv_cache=cache); model(next_token, kv_cache=cache)   # == model(both)[:, -1:]
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layers)]
        self.n_pos = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q = matrix(cfg, gen, h, d, e)
        self.W_K = matrix(cfg, gen, h, d, e)
        self.W_V = matrix(cfg, gen, h, d, e)
        self.W_O = matrix(cfg, gen, h, e, d, output=True)
        if cfg.bias:
            self.b_Q, self.b_K, self.b_V, self.b_O = zeros(h, e), zeros(h, e), zeros(h, e), zeros(d)
        else:
            self.b_Q = self.b_K = self.b_V = self.b_O = None
        if cfg.smeared_key:
            # alpha = 0 starts every head half-smeared; training picks how much to smear
            self.smear_alpha = zeros(h)
        if cfg.positional == "rotary":
            cos, sin = rotary_tables(cfg.n_ctx, cfg.rotary_dims, cfg.rotary_base)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head], after smearing: the keys attended with
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked, pre-softmax
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model]: each head's z @ W_O, built only when hooked
        # the explicit masked softmax even without hooks: under torch.compile inductor fuses it, and on
        # a CPU that beats the fused SDPA kernel at small head widths (docs/benchmarks.md, trainer speed)
        self.explicit = False

    @staticmethod
    def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        # [batch, pos, d_model] @ [d_model, head*d_head] as one matmul, then split heads
        h, d, e = W.shape
        out = x @ W.transpose(0, 1).reshape(d, h * e)
        out = out.view(*x.shape[:-1], h, e)
        return out if b is None else out + b

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, mask: Tensor | None = None,
                positions: Tensor | None = None, past: LayerKV | None = None) -> Tensor:
        """The attention output [batch, pos, d_model].

        Args:
            q_in, k_in, v_in: the query, key and value inputs [batch, pos, d_model] (they differ
                only for shortformer positions).
            mask: optional [batch, 1, query_pos, key_pos] bool from `padding_mask`; None is causal.
                With `past`, key_pos covers the cached keys too.
            positions: optional [batch, pos] position of each token (rotary; counts from a row's
                first real token in a left-padded batch); None is 0..pos-1.
            past: this layer's cached keys and values: the new ones are appended and attended with.
        """
        if q_in is k_in and k_in is v_in:  # one matmul for q, k and v: fewer, larger kernels
            W = torch.cat([self.W_Q, self.W_K, self.W_V])  # [3*head, d_model, d_head]
            b = None if self.b_Q is None else torch.cat([self.b_Q, self.b_K, self.b_V])
            q, k, v = self._project(q_in, W, b).chunk(3, dim=2)
        else:
            q = self._project(q_in, self.W_Q, self.b_Q)
            k = self._project(k_in, self.W_K, self.b_K)
            v = self._project(v_in, self.W_V, self.b_V)
        q = self.hook_q(q)
        if self.cfg.smeared_key:
            k = self._smear(k, mask, past)
        k = self.hook_k(k)
        v = self.hook_v(v)
        if self.cfg.positional == "rotary":
            pos = q.shape[1]
            if positions is None:
                cos, sin = self.rotary_cos[:pos], self.rotary_sin[:pos]
            else:
                cos, sin = self.rotary_cos[positions], self.rotary_sin[positions]  # [batch, pos, rotary_dim]
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        # [batch, head, pos, d_head] for the attention maths
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if past is not None:
            if past.k is not None:
                k, v = torch.cat([past.k, k], dim=2), torch.cat([past.v, v], dim=2)
            past.k, past.v = k, v
        if self.explicit or self.hook_attn_scores.active or self.hook_pattern.active:
            z = self._explicit(q, k, v, mask)
        elif mask is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]
        h, e, d = self.W_O.shape
        if self.hook_result.active:  # per-head outputs cost d_model x more memory than z: only on request
            out = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O)).sum(2)
        else:
            out = z.reshape(*z.shape[:2], h * e) @ self.W_O.reshape(h * e, d)
        return out if self.b_O is None else out + self.b_O

    def _smear(self, k: Tensor, mask: Tensor | None, past: LayerKV | None) -> Tensor:
        """Smeared keys of the new tokens, continuing from the cached last raw key if any."""
        # the last query's row of a left-padded mask is exactly the key mask [batch, key_pos]
        key_mask = None if mask is None else mask[:, 0, -1]
        raw_last = k[:, -1:]
        if past is not None and past.raw_k is not None:
            n_new = k.shape[1]
            k = smear_keys(torch.cat([past.raw_k, k], dim=1), self.smear_alpha,
                           None if key_mask is None else key_mask[:, -n_new - 1:])[:, 1:]
        else:
            k = smear_keys(k, self.smear_alpha, key_mask)
        if past is not None:
            past.raw_k = raw_last
        return k

    def mix(self, v_in: Tensor, pattern: Tensor, rows: Tensor | None = None) -> Tensor:
        """The attention output with a fixed pattern [batch, head, query, key] in place of the one
        queries and keys would give: the value path alone. `v_in` [copies * batch, pos, d_model]
        may stack copies of the pattern's batch (the pattern broadcasts over them); with `rows`
        [batch, k], only those query positions: [copies * batch, k, d_model]. No hook runs inside."""
        batch, (h, d, e) = pattern.shape[0], self.W_V.shape
        x = v_in.unflatten(0, (-1, batch))  # [copy, batch, pos, d_model]
        n_pos = x.shape[2]
        if rows is not None and rows.shape[1] * h * (n_pos * d + d * e) < n_pos * d * h * e + h * n_pos * n_pos * e:
            # mix the value inputs by the k pattern rows first, then project: k rows, not every position
            at = torch.arange(batch, device=rows.device)[:, None]
            p = pattern.transpose(1, 2)[at, rows].to(x.dtype)  # [batch, k, head, key]
            z = torch.einsum("nbkhd,hde->nbkhe", torch.einsum("bkhs,nbsd->nbkhd", p, x), self.W_V)
            z = z if self.b_V is None else z + p.sum(-1)[..., None] * self.b_V  # each pattern row sums to 1
        else:
            v = self._project(x, self.W_V, self.b_V)  # [copy, batch, pos, head, d_head]
            z = torch.einsum("bhqk,nbkhe->nbqhe", pattern.to(v.dtype), v)
            if rows is not None:
                z = z[:, torch.arange(batch, device=rows.device)[:, None], rows]
        z = z.flatten(0, 1).flatten(-2)  # [copies * batch, pos or k, head * d_head]
        out = z @ self.W_O.reshape(h * e, -1)
        return out if self.b_O is None else out + self.b_O

    def head_projection(self, x: Tensor, which: str, head: int) -> Tensor:
        """One head's query, key (smeared, if the model smears) or value from an input
        [batch, pos, d_model]: [batch, pos, d_head], as it appears at hook_q/k/v."""
        W = {"q": self.W_Q, "k": self.W_K, "v": self.W_V}[which][head : head + 1]
        b = {"q": self.b_Q, "k": self.b_K, "v": self.b_V}[which]
        out = self._project(x, W, None if b is None else b[head : head + 1])
        if which == "k" and self.cfg.smeared_key:
            out = smear_keys(out, self.smear_alpha[head : head + 1])
        return out[:, :, 0]

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        n_pos = q.shape[-2]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [batch, head, query_pos, key_pos]
        if mask is None:
            mask = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        return pattern.to(v.dtype) @ v
