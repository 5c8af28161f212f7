"""The logit lens and direct logit attribution.

The **logit lens** decodes the residual stream before every layer (and after the last) through
the final norm and the unembedding, re-normalising each residual with its own statistics. **Direct
logit attribution** splits the final logits into one term per component that writes into the
residual stream (embeddings, each head, each attention-output bias, each MLP): because the final
LayerNorm is affine once its scale is fixed, the terms, each centred and divided by the final
residual's scale, sum to the logits exactly."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.model.transformer import LayerNorm, RMSNorm, Transformer


def _unembed(model: Transformer, x: Tensor) -> Tensor:
    logits = x @ model.W_U
    return logits if model.b_U is None else logits + model.b_U


@torch.inference_mode()
def logit_lens(model: Transformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer_plus_1 batch pos d_vocab"]:
    """Logits decoded from `blocks.{l}.hook_resid_pre` for every layer l, then from the final
    residual stream (so the last entry equals the model's logits)."""
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)] + [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    _, cache = model.run_with_cache(tokens.to(model.W_E.device), names_filter=names)
    return torch.stack([_unembed(model, model.ln_final(cache[n])) for n in names])


@torch.inference_mode()
def direct_logit_attribution(
    model: Transformer, tokens: Int[Tensor, "batch pos"]
) -> tuple[list[str], Float[Tensor, "component batch pos d_vocab"], Float[Tensor, "batch pos d_vocab"]]:
    """Each component's direct contribution to the logits.

    Returns:
        names (e.g. "embed", "pos_embed", "L0H1", "L0 attn bias", "L1 mlp"), their logit terms
        [component, batch, pos, d_vocab], and the constant term (norm bias through W_U, plus b_U)
        [batch, pos, d_vocab]; terms.sum(0) + constant == model(tokens).
    """
    cfg = model.cfg
    keep = lambda n: n in ("hook_embed", "hook_pos_embed") or n.endswith(("attn.hook_z", "hook_mlp_out", "hook_resid_post"))  # noqa: E731
    _, cache = model.run_with_cache(tokens.to(model.W_E.device), names_filter=keep)
    names, parts = ["embed"], [cache["hook_embed"]]
    if cfg.positional == "learned":
        names.append("pos_embed")
        parts.append(cache["hook_pos_embed"])
    for l, block in enumerate(model.blocks):
        a = block.attn
        per_head = torch.einsum("bphe,hed->bphd", cache["z", l], a.W_O)  # [batch, pos, head, d_model]
        for h in range(cfg.n_heads):
            names.append(f"L{l}H{h}")
            parts.append(per_head[:, :, h])
        if a.b_O is not None:
            names.append(f"L{l} attn bias")
            parts.append(a.b_O.expand_as(parts[0]))
        if not cfg.attn_only:
            names.append(f"L{l} mlp")
            parts.append(cache["mlp_out", l])
    stack = torch.stack(parts)  # [component, batch, pos, d_model]
    const = torch.zeros_like(parts[0])
    if isinstance(model.ln_final, LayerNorm):
        final = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
        scale = ((final - final.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt()
        stack = (stack - stack.mean(-1, keepdim=True)) / scale * model.ln_final.w
        const = const + model.ln_final.b
    elif isinstance(model.ln_final, RMSNorm):  # no centring: each term is divided by the same scale
        final = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
        stack = stack / (final.pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt() * model.ln_final.w
    terms = stack @ model.W_U
    return names, terms, _unembed(model, const)
