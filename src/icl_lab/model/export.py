"""Export a model to TransformerLens, for parity checks and for users who want its tools on a model
trained here. Every `ModelConfig` option either maps exactly onto TransformerLens 3.9's
`HookedTransformerConfig` or is refused with a `ConfigError`: the export never builds a different
model. TransformerLens is optional: it is imported only when this is called."""

from __future__ import annotations

import torch

from icl_lab.errors import ConfigError
from icl_lab.model.config import ModelConfig
from icl_lab.model.transformer import Transformer

_TL_NAMES = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U", "unembed.b_U": "b_U"}

# Every ModelConfig option this export knows: mapped below, refused in `_refusal`, or without effect
# on a built model (init_std only draws the initial weights, loss_dtype only sets the loss's
# precision). An option missing here is refused unless it has its default value, so a new option
# can never slip through as a different model.
_KNOWN_OPTIONS = frozenset({
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "positional",
    "normalization", "norm_eps", "bias", "smeared_key", "act_fn", "gated_mlp", "parallel_attn_mlp",
    "init_std", "rotary_base", "rotary_dim", "loss_dtype",
})


def _refusal(cfg: ModelConfig) -> str | None:
    """Why `cfg` has no exact TransformerLens equivalent, in one line with the fix; None if it has."""
    for name, field in type(cfg).model_fields.items():
        if name not in _KNOWN_OPTIONS and getattr(cfg, name) != field.default:
            value = getattr(cfg, name)
            return f"option {name}={value!r} is not supported by to_transformer_lens; export a model with the default"
    if cfg.smeared_key:
        return "smeared-key models have no TransformerLens equivalent; export a model without smeared_key"
    if cfg.gated_mlp and cfg.bias:
        # ours: act(x W_gate) * (x W_in + b_in); TransformerLens: act(x W_gate) * (x W_in) + b_in
        return ("gated_mlp with bias=True has no TransformerLens equivalent (it adds b_in after the gate, "
                "not before); export a gated model built with bias=False")
    return None


def to_transformer_lens(model: Transformer):
    """A `transformer_lens.HookedTransformer` with the same weights and the same outputs.

    Mapped exactly: learned, shortformer and rotary positions (rotate-half, GPT-NeoX style, on the
    first `rotary_dim` dimensions of each head, with the same base); LayerNorm, RMSNorm or none,
    with the same epsilon; gelu, gelu_new, relu and silu; gated (SwiGLU) MLPs; parallel attention
    and MLP; any d_head. Biases this model was built without are zero there (TransformerLens
    always has biases). The weights keep their dtype and device. TransformerLens's global RNG is
    left alone (nothing is initialised; every parameter is copied or zeroed).

    Raises:
        ConfigError: TransformerLens is not installed, or the model uses an option it cannot
            express: smeared keys, or a gated MLP with biases.

    Example:
        >>> ref = to_transformer_lens(model)
        >>> torch.allclose(ref(tokens), model(tokens), atol=1e-4)
        True
    """
    try:
        import transformer_lens as tl
    except ImportError:
        raise ConfigError("TransformerLens is not installed; pip install 'icl-lab[test]' or transformer-lens") from None
    cfg = model.cfg
    if (why := _refusal(cfg)) is not None:
        raise ConfigError(why)
    first = next(model.parameters())
    rotary = cfg.positional == "rotary"
    ref = tl.HookedTransformer(tl.HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp or None, d_vocab=cfg.d_vocab, act_fn=cfg.act_fn, attn_only=cfg.attn_only,
        normalization_type={"layernorm": "LN", "rmsnorm": "RMS", "none": None}[cfg.normalization], eps=cfg.norm_eps,
        positional_embedding_type={"learned": "standard"}.get(cfg.positional, cfg.positional),
        rotary_dim=cfg.rotary_dims if rotary else None, rotary_base=cfg.rotary_base, rotary_adjacent_pairs=False,
        gated_mlp=cfg.gated_mlp, parallel_attn_mlp=cfg.parallel_attn_mlp,
        device=str(first.device), dtype=first.dtype, init_weights=False,
    ))
    ours = dict(model.named_parameters())
    used = set()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            key = _TL_NAMES.get(name, name)
            src = ours.get(key)
            if src is None and not cfg.bias and key.rsplit(".", 1)[-1].startswith("b_"):
                p.zero_()  # a bias we were built without
            elif src is None or src.shape != p.shape:
                raise ConfigError(f"TransformerLens parameter {name} has no counterpart here; this model cannot be exported")
            else:
                p.copy_(src)
                used.add(key)
    if unused := sorted(set(ours) - used):
        raise ConfigError(f"parameter {unused[0]} has no TransformerLens counterpart; this model cannot be exported")
    return ref.eval()
