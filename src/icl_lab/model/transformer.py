"""The whole transformer in one file: embeddings, pre-norm blocks, unembedding.

A block is `resid_mid = resid_pre + attn(ln1(resid_pre))`, then
`resid_post = resid_mid + mlp(ln2(resid_mid))` (no MLP for attention-only models). Hook names
follow TransformerLens (`hook_embed`, `blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_pattern`,
...), so code written for it reads the same here. The forward always returns logits for every
position, `[batch, pos, d_vocab]`."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, Shaped
from torch import Tensor, nn

from icl_lab.errors import ConfigError
from icl_lab.data.tokenizer import Tokenizer
from icl_lab.model.attention import Attention, KVCache, LayerKV, padding_mask
from icl_lab.model.config import ModelConfig
from icl_lab.model.hooks import HookedRootModule, HookPoint
from icl_lab.model.init import matrix, zeros
from icl_lab.model.text import PaddingSide, TextMixin
from icl_lab.model.weights import WeightsMixin

ReturnType = Literal["logits", "loss", "both"] | None
RETURN_TYPES = ("logits", "loss", "both", None)


class Output(NamedTuple):
    """What `model(..., return_type="both")` returns, as TransformerLens's `Output`."""

    logits: Tensor
    loss: Tensor


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

    def forward(self, resid: Tensor, pos_embed: Tensor | None, mask: Tensor | None = None,
                positions: Tensor | None = None, past: LayerKV | None = None,
                pattern: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """resid_post [batch, pos, d_model] from resid_pre.

        With `pattern` [batch, head, query, key], attention keeps that pattern (no queries or
        keys: pattern-preserving ablation), and `resid` may stack copies of that batch along dim 0
        ([copies * batch, pos, d_model]); with `rows` [batch, k] as well, only those query
        positions are computed and returned ([copies * batch, k, d_model])."""
        resid = self.hook_resid_pre(resid)
        q_in, k_in, v_in = self.attn_inputs(resid, pos_embed)
        if pattern is None:
            attn_out = self.attn(q_in, k_in, v_in, mask, positions, past)
        else:
            attn_out = self.attn.mix(v_in, pattern, rows)
            resid = resid if rows is None else select_rows(resid, rows)
        return self.after_attention(resid, self.hook_attn_out(attn_out))

    def after_attention(self, resid: Tensor, attn_out: Tensor) -> Tensor:
        """resid_post from resid_pre and the attention output [..., d_model]: the residual sums and
        the MLP, the one place a block's layout (sequential, parallel or attention-only) lives;
        ablations that change a head's output continue from here."""
        if self.cfg.parallel_attn_mlp:  # both read resid_pre (GPT-NeoX); no resid_mid exists
            return self.hook_resid_post(resid + attn_out + self.hook_mlp_out(self.mlp(self.ln2(resid))))
        resid = resid + attn_out
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


def select_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x [copies * batch, pos, ...] at rows [batch, k] of each copy's sequences: [copies * batch, k, ...]."""
    batch = rows.shape[0]
    at = torch.arange(batch, device=rows.device)[:, None]
    return x.unflatten(0, (-1, batch))[:, at, rows].flatten(0, 1)


def _scored(attention_mask: Tensor) -> Tensor:
    """[batch, pos-1] bool: the next-token predictions a padded batch scores (from a real token,
    of a real token)."""
    real = attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


class Transformer(HookedRootModule, TextMixin, WeightsMixin):
    """A decoder-only transformer with TransformerLens-style hooks and weights.

    Attributes:
        tokenizer: the `Tokenizer` of the text it was trained on (set by `icl_lab.load_model`;
            None for synthetic models), which `to_tokens` / `to_string` use.
        bos_id: the token `to_tokens` puts first (None: the model's text starts without one).

    Example:
        >>> model = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=1, d_vocab=128, n_ctx=64))
        >>> logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        >>> cache["pattern", 1].shape   # [batch, head, query_pos, key_pos]
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg.model_copy()  # its own copy: `cfg.device` follows this model
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
        self.tokenizer: Tokenizer | None = None
        self.bos_id: int | None = None
        self.setup_hooks()

    def shortformer_pos(self, n_pos: int) -> Tensor | None:
        """The positional term added to every layer's query and key inputs (shortformer only)."""
        return self.W_pos[:n_pos] if self.cfg.positional == "shortformer" else None

    def to(self, *args: Any, print_details: bool = True, **kwargs: Any) -> "Transformer":
        """`nn.Module.to`, also accepting TransformerLens's `print_details` keyword (ignored), so
        tools that take any model with `cfg.n_heads` for a HookedTransformer (devinterp's SGLD
        sampler calls `.to(device, print_details=False)`) can move this one too."""
        return super().to(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):  # every move (.to, .cuda, .half) ends here: keep cfg.device current
        out = super()._apply(fn, recurse)
        self.cfg._device = str(self.W_E.device)
        return out

    def weight_matrices(self) -> list[nn.Parameter]:
        """The weight matrices and embeddings, chosen by rank (a parameter of 2 or more dimensions),
        not by name, so a new parameter is classified without a naming convention; biases, norm
        gains and smearing logits (1-D) are excluded, and so are the attention's per-head biases
        b_Q/b_K/b_V [head, d_head] (a vector per head). The trainer applies weight decay to these only."""
        per_head = {id(b) for block in self.blocks for b in (block.attn.b_Q, block.attn.b_K, block.attn.b_V) if b is not None}
        return [p for p in self.parameters() if p.ndim >= 2 and id(p) not in per_head]

    # ---- forward -------------------------------------------------------------------------
    def forward(
        self, tokens: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"] | str | list[str],
        attention_mask: Shaped[Tensor, "batch key_pos"] | str | None = None,
        stop_at_layer: int | None = None, kv_cache: KVCache | None = None, start_at_layer: int | None = None,
        *, return_type: ReturnType = "logits", loss_per_token: bool = False, prepend_bos: bool | None = None,
        padding_side: PaddingSide | None = None,
    ) -> Float[Tensor, "batch pos d_out"] | Float[Tensor, "..."] | Output | None:
        """Logits [batch, pos, d_vocab] for every position (or the loss, with `return_type`).

        Args:
            tokens: [batch, pos] token ids, a string or a list of strings (tokenized with
                `to_tokens(..., prepend_bos, padding_side)`, padding masked), or with
                `start_at_layer` the residual stream [batch, pos, d_model] entering that block.
            return_type: "logits", "loss" (the mean next-token loss, or [batch, pos-1] with
                `loss_per_token`), "both" (an `Output(logits, loss)`) or None (runs the model for
                its hooks, returns None), as TransformerLens. TransformerLens's positional order
                `model(tokens, "loss")` works too.
            attention_mask: optional [batch, pos], 1 at real tokens and 0 at left padding (from
                `to_tokens(texts, return_mask=True)`): padding is never attended to, and positions
                count from each row's first real token, so real tokens get the logits they would
                get unpadded. With `kv_cache`, it covers the cached tokens too.
            stop_at_layer: run blocks [0, stop_at_layer) only and return the residual stream
                [batch, pos, d_model] there (`blocks.{stop_at_layer}.hook_resid_pre`); negative
                values count from the end, as in a slice.
            kv_cache: a `KVCache` of the tokens before `tokens`: they are attended to without
                being rerun, and the new keys and values are appended (what `generate` does).
            start_at_layer: `tokens` is the residual stream at `blocks.{start_at_layer}.hook_resid_pre`:
                run blocks [start_at_layer, stop_at_layer) only (the embeddings are skipped).
                With `stop_at_layer`, a slice of the model: what ablations and patching rerun.

        Raises:
            ConfigError: the sequence is longer than n_ctx, a mask of another length, or
                `stop_at_layer` / `start_at_layer` with a `kv_cache`.
        """
        if isinstance(attention_mask, str):  # TransformerLens's order: model(tokens, return_type)
            attention_mask, return_type = None, attention_mask
        if return_type not in RETURN_TYPES:
            raise ConfigError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if isinstance(tokens, (str, list, tuple)):
            tokens, attention_mask = self.to_tokens(tokens, prepend_bos, return_mask=True, padding_side=padding_side)
            attention_mask = None if bool(attention_mask.all()) else attention_mask
        out = self._run(tokens, attention_mask, stop_at_layer, kv_cache, start_at_layer)
        if stop_at_layer is not None or return_type == "logits":
            return out
        if return_type is None:
            return None
        if start_at_layer is not None:
            raise ConfigError("a loss needs the tokens: with start_at_layer, use return_type='logits' and score them yourself")
        per_token = self._loss(out, tokens.to(out.device), attention_mask)
        loss = per_token if loss_per_token else self._mean(per_token, attention_mask)
        return loss if return_type == "loss" else Output(out, loss)

    def _run(self, tokens: Tensor, attention_mask: Tensor | None, stop_at_layer: int | None, kv_cache: KVCache | None,
             start_at_layer: int | None) -> Tensor:
        """The forward on ids (or a residual stream with `start_at_layer`): logits, or the residual
        stream at `stop_at_layer`."""
        tokens = tokens.to(self.W_E.device)  # inputs follow the model (a no-op when they are already there)
        past = 0 if kv_cache is None else kv_cache.n_pos
        batch, n_pos = tokens.shape[:2]
        if past + n_pos > self.cfg.n_ctx:
            raise ConfigError(f"sequence of {past + n_pos} tokens exceeds n_ctx={self.cfg.n_ctx}; truncate the input")
        if kv_cache is not None and (stop_at_layer is not None or start_at_layer is not None):
            raise ConfigError("stop_at_layer / start_at_layer would leave the kv_cache's other layers behind; use one or the other")
        mask, positions = self._mask_and_positions(batch, n_pos, tokens.device, attention_mask, past)
        if start_at_layer is None:
            resid = self.hook_embed(F.embedding(tokens, self.W_E))
        elif tokens.ndim != 3 or tokens.shape[-1] != self.cfg.d_model:
            raise ConfigError(f"start_at_layer needs the residual stream [batch, pos, {self.cfg.d_model}], got {tuple(tokens.shape)}")
        else:
            resid = tokens
        pos_embed = None
        if self.cfg.positional in ("learned", "shortformer"):
            if positions is not None:
                W_pos = self.W_pos[positions]  # [batch, pos, d_model]
            else:
                W_pos = self.W_pos if n_pos == self.cfg.n_ctx else self.W_pos[:n_pos]  # no slice to undo in backward
            pos_embed = W_pos.expand(batch, n_pos, -1)
            if start_at_layer is None:
                pos_embed = self.hook_pos_embed(pos_embed)
            if self.cfg.positional == "learned":  # in the residual stream already when starting later
                resid, pos_embed = (resid + pos_embed if start_at_layer is None else resid), None
        first = start_at_layer or 0
        for i, block in enumerate(self.blocks[first:stop_at_layer], start=first):
            resid = block(resid, pos_embed, mask, positions, None if kv_cache is None else kv_cache.layers[i])
        if kv_cache is not None:
            kv_cache.n_pos = past + n_pos
        if stop_at_layer is not None:
            return resid
        return self.unembed(resid)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits from the final residual stream: the final norm, then W_U (+ b_U)."""
        logits = self.ln_final(resid) @ self.W_U
        return logits if self.b_U is None else logits + self.b_U

    def _mask_and_positions(self, batch: int, n_pos: int, device: torch.device, attention_mask: Tensor | None,
                            past: int) -> tuple[Tensor | None, Tensor | None]:
        """(attention mask [batch, 1, pos, past + pos], positions [batch, pos]) for a padded batch
        or cached keys; (None, None) for the plain causal case, which keeps the fused path."""
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if tuple(attention_mask.shape) != (batch, past + n_pos):
                raise ConfigError(f"attention_mask {tuple(attention_mask.shape)} does not match tokens {(batch, past + n_pos)} "
                                  "(cached and new); pass the mask to_tokens returned")
            if past == 0 and attention_mask.bool().all():  # an all-ones mask changes nothing: stay fused
                attention_mask = None
        if attention_mask is None and past == 0:
            return None, None
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + n_pos, dtype=torch.long, device=device)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # [batch, pos]
        return padding_mask(attention_mask)[:, :, past:], positions

    def logits(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Shaped[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for every position (of a left-padded batch too, with its `attention_mask`)."""
        return self(tokens, attention_mask)

    def per_token_loss(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Shaped[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos_minus_1"]:
        """Cross-entropy of predicting tokens[:, i+1] at position i, in nats: [batch, pos-1].
        With a left-padded batch's `attention_mask`, a prediction from or of padding scores 0."""
        tokens = tokens.to(self.W_E.device)
        return self._loss(self(tokens, attention_mask), tokens, attention_mask)

    def _loss(self, logits: Tensor, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
        """[batch, pos-1] next-token losses from the logits (what `per_token_loss` returns)."""
        # score every position against a target padded with ignore_index, then drop the last:
        # slicing the small loss instead of the logits avoids a logits-sized zero-fill in backward
        targets = F.pad(tokens[:, 1:], (0, 1), value=-100)
        if attention_mask is not None:
            targets = targets.masked_fill(~F.pad(_scored(attention_mask.to(tokens.device)), (0, 1)), -100)
        dtype = torch.float64 if self.cfg.loss_dtype == "fp64" else torch.float32
        loss = F.cross_entropy(logits.flatten(0, 1).to(dtype), targets.flatten(), reduction="none", ignore_index=-100)
        return loss.view(tokens.shape)[:, :-1]

    def loss(self, tokens: Int[Tensor, "batch pos"], attention_mask: Shaped[Tensor, "batch pos"] | None = None) -> Float[Tensor, ""]:
        """Mean next-token cross-entropy in nats (over real targets only, with an `attention_mask`)."""
        return self._mean(self.per_token_loss(tokens, attention_mask), attention_mask)

    @staticmethod
    def _mean(per_token: Tensor, attention_mask: Tensor | None) -> Tensor:
        if attention_mask is None:
            return per_token.mean()
        return per_token.sum() / _scored(attention_mask.to(per_token.device)).sum().clamp(min=1)
