"""Hook names from short ones, with TransformerLens's `get_act_name` rules, so
`get_act_name("k", 6, "a")`, `get_act_name("k6")`, `get_act_name("scale", 4, "ln1")` and
`get_act_name("scale")` name the same hook points here as there."""

from __future__ import annotations

import re

_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP = {"pre", "post", "mid", "pre_linear"}
_NORM = {"scale", "normalized"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of a short one.

    Args:
        name: "resid_pre", "k", "pattern", "scale", ... (or a full name, returned as is); a
            layer and block part may be written into it: "k6", "scale4ln1", "pre5".
        layer: the block, for activations in every block.
        layer_type: which part of the block when the name alone does not say: "attn"/"a",
            "mlp"/"m", "ln1", "ln2"; the norms' "scale" and "normalized" without a layer are the
            final norm's.

    Example:
        >>> get_act_name("pattern", 1), get_act_name("scale"), get_act_name("normalized", 0, "ln2")
        ('blocks.1.attn.hook_pattern', 'ln_final.hook_scale', 'blocks.0.ln2.hook_normalized')
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    if (m := re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)) is not None:
        name, layer, layer_type = m.group(1), int(m.group(2)), m.group(3)
    name = _ALIASES.get(name, name)
    if name in _ATTN:
        layer_type = "attn"
    elif name in _MLP:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPES:
        layer_type = _LAYER_TYPES[layer_type]
    full = (f"blocks.{layer}." if layer is not None else "") + (f"{layer_type}." if layer_type else "") + f"hook_{name}"
    return f"ln_final.{full}" if name in _NORM and layer is None else full
