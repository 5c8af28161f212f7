"""The whole transformer in one file: embeddings, pre-norm blocks, unembedding.

A block is `resid_mid = resid_pre + attn(ln1(resid_pre))`, then
`resid_post = resid_mid + mlp(ln2(resid_mid))` (no MLP for attention-only models). Hook names
follow TransformerLens (`hook_embed`, `blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_pattern`,
...), so code written for it reads the same here. The forward always returns logits for every
position, `[batch, pos, d_vocab]`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from icl_lab.errors import ConfigError
from icl_lab.model.attention import Attention
from icl_lab.model.config import ModelConfig
from icl_lab.model.hooks import HookedRootModule, HookPoint
from icl_lab.model.init import matrix, zeros


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
        if not (self.hook_scale.active or self.hook_normalized.active):
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class RMSNorm(nn.Module):
    """x / rms(x) * w (Llama): no centring, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Tensor) -> Tensor:
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w


ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "silu": F.silu}


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.W_in = matrix(cfg, gen, cfg.d_model, cfg.d_mlp)
        self.W_out = matrix(cfg, gen, cfg.d_mlp, cfg.d_model, output=True)
        self.b_in = zeros(cfg.d_mlp) if cfg.bias else None
        self.b_out = zeros(cfg.d_model) if cfg.bias else None
        self.act = ACTIVATIONS[cfg.act_fn]
        if cfg.gated_mlp:  # act(x W_gate) * (x W_in): hook_pre is the gate, as in TransformerLens
            self.W_gate = matrix(cfg, gen, cfg.d_model, cfg.d_mlp)
            self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Tensor) -> Tensor:
        pre = x @ self.W_in
        pre = pre if self.b_in is None else pre + self.b_in
        if hasattr(self, "W_gate"):
            post = self.act(self.hook_pre(x @ self.W_gate)) * self.hook_pre_linear(pre)
        else:
            post = self.act(self.hook_pre(pre))
        out = self.hook_post(post) @ self.W_out
        return out if self.b_out is None else out + self.b_out


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.normalization == "layernorm":
        return LayerNorm(cfg.d_model, cfg.norm_eps)
    return RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.normalization == "rmsnorm" else nn.Identity()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = _norm(cfg)
        self.attn = Attention(cfg, gen)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.ln2 = _norm(cfg)
            self.mlp = MLP(cfg, gen)
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def attn_inputs(self, resid: Tensor, pos_embed: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The query, key and value inputs [batch, pos, d_model] the attention reads from `resid`."""
        x = self.ln1(resid)
        if pos_embed is None:
            return x, x, x
        # shortformer: positions enter queries and keys only (after the norm, as in
        # TransformerLens), never the residual stream or the values
        qk = x + pos_embed
        return qk, qk, x

    def forward(self, resid: Tensor, pos_embed: Tensor | None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(*self.attn_inputs(resid, pos_embed)))
        if self.cfg.parallel_attn_mlp:  # both read resid_pre (GPT-NeoX); no resid_mid exists
            return self.hook_resid_post(resid + attn_out + self.hook_mlp_out(self.mlp(self.ln2(resid))))
        resid = resid + attn_out
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class Transformer(HookedRootModule):
    """A decoder-only transformer with TransformerLens-style hooks and weights.

    Example:
        >>> model = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=1, d_vocab=128, n_ctx=64))
        >>> logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> cache["pattern", 1].shape   # [batch, head, query_pos, key_pos]
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)  # weights depend only on (cfg, seed)
        self.W_E = matrix(cfg, gen, cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional in ("learned", "shortformer"):
            self.W_pos = matrix(cfg, gen, cfg.n_ctx, cfg.d_model)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg, gen) for _ in range(cfg.n_layers))
        self.ln_final = _norm(cfg)
        self.W_U = matrix(cfg, gen, cfg.d_model, cfg.d_vocab)
        self.b_U = zeros(cfg.d_vocab) if cfg.bias else None
        self.setup_hooks()

    def shortformer_pos(self, n_pos: int) -> Tensor | None:
        """The positional term added to every layer's query and key inputs (shortformer only)."""
        return self.W_pos[:n_pos] if self.cfg.positional == "shortformer" else None

    def weight_matrices(self) -> list[nn.Parameter]:
        """The weight matrices and embeddings (every parameter named `W_*`, by the TransformerLens
        convention this model keeps); biases `b_*`, norm gains and smearing logits are excluded.
        The trainer applies weight decay to these only."""
        return [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("W_")]

    # ---- forward -------------------------------------------------------------------------
    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        n_pos = tokens.shape[-1]
        tokens = tokens.to(self.W_E.device)  # inputs follow the model (a no-op when they are already there)
        if n_pos > self.cfg.n_ctx:
            raise ConfigError(f"sequence of {n_pos} tokens exceeds n_ctx={self.cfg.n_ctx}; truncate the input")
        resid = self.hook_embed(F.embedding(tokens, self.W_E))
        pos_embed = None
        if self.cfg.positional in ("learned", "shortformer"):
            W_pos = self.W_pos if n_pos == self.cfg.n_ctx else self.W_pos[:n_pos]  # no slice to undo in backward
            pos_embed = self.hook_pos_embed(W_pos.expand_as(resid))
            if self.cfg.positional == "learned":
                resid, pos_embed = resid + pos_embed, None
        for block in self.blocks:
            resid = block(resid, pos_embed)
        logits = self.ln_final(resid) @ self.W_U
        return logits if self.b_U is None else logits + self.b_U

    def logits(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for every position."""
        return self(tokens)

    def per_token_loss(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
        """Cross-entropy of predicting tokens[:, i+1] at position i, in nats: [batch, pos-1]."""
        tokens = tokens.to(self.W_E.device)
        logits = self(tokens)
        # score every position against a target padded with ignore_index, then drop the last:
        # slicing the small loss instead of the logits avoids a logits-sized zero-fill in backward
        targets = F.pad(tokens[:, 1:], (0, 1), value=-100)
        dtype = torch.float64 if self.cfg.loss_dtype == "fp64" else torch.float32
        loss = F.cross_entropy(logits.flatten(0, 1).to(dtype), targets.flatten(), reduction="none", ignore_index=-100)
        return loss.view(tokens.shape)[:, :-1]

    def loss(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
        """Mean next-token cross-entropy in nats."""
        return self.per_token_loss(tokens).mean()

    # ---- weights stacked over layers, TransformerLens orientation --------------------------
    def _stack(self, name: str) -> Tensor:
        return torch.stack([getattr(b.attn, name) for b in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack("W_O")
