"""How each pretrained family maps onto the icl-lab transformer: a config translator and a
state-dict translator per Hugging Face `model_type`.

- **GPT-2**: learned positions, pre-LayerNorm blocks, a tanh-GELU MLP (or `activation_function`
  gelu, relu, silu), biases everywhere, a tied unembedding (copied as W_U = W_E^T), or an untied
  one when the folder holds `lm_head.weight` (as `icl-lab export` writes). HF's Conv1D weights are
  [in, out], icl-lab's orientation.
- **GPT-NeoX / Pythia**: rotary positions on the first `partial_rotary_factor` of each head,
  parallel (or, with `use_parallel_residual: false`, sequential) attention and MLP, exact GELU,
  an untied unembedding. The fused QKV weight is laid out [head, (q k v), d_head] along its
  output axis.
- **Llama** (and SmolLM2): RMSNorm, rotary on the whole head, a SwiGLU MLP, no biases, grouped-query
  attention. Key and value heads are repeated so that every query head has its own copy
  (head h reads kv head h // (n_heads / n_kv_heads), as HF's `repeat_kv`), which keeps every
  per-head analysis unchanged.

`nn.Linear` weights are [out, in] and are transposed to icl-lab's [in, out]."""

from __future__ import annotations

import einops
import torch
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.model.config import ModelConfig


def _rope(hf: dict) -> dict:
    """rope theta and partial factor from either the old (rotary_pct, rope_theta) or the new
    (rope_parameters) config layout; scaled rope variants are refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"rope type {kind!r} (scaled rotary) is not supported yet; only the default rope imports")
    return {"theta": params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
            "factor": params.get("partial_rotary_factor", hf.get("rotary_pct", hf.get("partial_rotary_factor", 1.0)))}


ACTIVATIONS = ("gelu_new", "gelu", "relu", "silu")  # HF ACT2FN names that are icl-lab's act_fn of the same name


def _gpt2_config(hf: dict) -> ModelConfig:
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise ConfigError(f"GPT-2 activation {hf['activation_function']!r} is not supported; expected one of {', '.join(ACTIVATIONS)}")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError("GPT-2 without the 1/sqrt(d_head) attention scale (scale_attn_weights false or "
                          "scale_attn_by_inverse_layer_idx true) is not supported; import a model with the standard scale")
    d_model = hf["n_embd"]
    return ModelConfig.parse(dict(
        n_layers=hf["n_layer"], d_model=d_model, n_heads=hf["n_head"], d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"], n_ctx=hf["n_positions"], positional="learned", normalization="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), bias=True, act_fn=hf.get("activation_function", "gelu_new"),
    ), where="GPT-2 config")


def _gpt2_weights(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    hf = {k.removeprefix("transformer."): v.float() for k, v in hf.items()}
    h = cfg.n_heads
    unembed = hf.get("lm_head.weight", hf["wte.weight"])  # untied when the folder has its own (icl-lab's export)
    out = {"W_E": hf["wte.weight"], "W_pos": hf["wpe.weight"], "W_U": unembed.T.clone(),
           "b_U": torch.zeros(cfg.d_vocab), "ln_final.w": hf["ln_f.weight"], "ln_final.b": hf["ln_f.bias"]}
    for i in range(cfg.n_layers):
        p, o = f"h.{i}.", f"blocks.{i}."
        W_q, W_k, W_v = hf[p + "attn.c_attn.weight"].chunk(3, dim=1)  # each [d_model, head*d_head]
        b_q, b_k, b_v = hf[p + "attn.c_attn.bias"].chunk(3)
        for name, W, b in (("Q", W_q, b_q), ("K", W_k, b_k), ("V", W_v, b_v)):
            out[o + f"attn.W_{name}"] = einops.rearrange(W, "d (h e) -> h d e", h=h)
            out[o + f"attn.b_{name}"] = einops.rearrange(b, "(h e) -> h e", h=h)
        out[o + "attn.W_O"] = einops.rearrange(hf[p + "attn.c_proj.weight"], "(h e) d -> h e d", h=h)
        out[o + "attn.b_O"] = hf[p + "attn.c_proj.bias"]
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[o + f"{ours}.w"], out[o + f"{ours}.b"] = hf[p + f"{theirs}.weight"], hf[p + f"{theirs}.bias"]
        out[o + "mlp.W_in"], out[o + "mlp.b_in"] = hf[p + "mlp.c_fc.weight"], hf[p + "mlp.c_fc.bias"]
        out[o + "mlp.W_out"], out[o + "mlp.b_out"] = hf[p + "mlp.c_proj.weight"], hf[p + "mlp.c_proj.bias"]
    return out


def _neox_config(hf: dict) -> ModelConfig:
    rope, d_model, n_heads = _rope(hf), hf["hidden_size"], hf["num_attention_heads"]
    d_head = d_model // n_heads
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        raise ConfigError(f"GPT-NeoX activation {hf['hidden_act']!r} is not supported; expected one of {', '.join(ACTIVATIONS)}")
    return ModelConfig.parse(dict(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads, d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"], positional="rotary",
        rotary_dim=int(d_head * rope["factor"]), rotary_base=rope["theta"], normalization="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5), bias=True,
        act_fn=hf.get("hidden_act", "gelu"), parallel_attn_mlp=hf.get("use_parallel_residual", True),
    ), where="GPT-NeoX config")


def _neox_weights(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    hf = {k.removeprefix("gpt_neox."): v.float() for k, v in hf.items()}
    h = cfg.n_heads
    unembed = hf["lm_head.weight"] if "lm_head.weight" in hf else hf["embed_out.weight"]
    out = {"W_E": hf["embed_in.weight"], "W_U": unembed.T.contiguous(), "b_U": torch.zeros(cfg.d_vocab),
           "ln_final.w": hf["final_layer_norm.weight"], "ln_final.b": hf["final_layer_norm.bias"]}
    for i in range(cfg.n_layers):
        p, o = f"layers.{i}.", f"blocks.{i}."
        W = einops.rearrange(hf[p + "attention.query_key_value.weight"], "(h three e) d -> three h d e", h=h, three=3)
        b = einops.rearrange(hf[p + "attention.query_key_value.bias"], "(h three e) -> three h e", h=h, three=3)
        for j, name in enumerate("QKV"):
            out[o + f"attn.W_{name}"], out[o + f"attn.b_{name}"] = W[j], b[j]
        out[o + "attn.W_O"] = einops.rearrange(hf[p + "attention.dense.weight"], "d (h e) -> h e d", h=h)
        out[o + "attn.b_O"] = hf[p + "attention.dense.bias"]
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            out[o + f"{ours}.w"], out[o + f"{ours}.b"] = hf[p + f"{theirs}.weight"], hf[p + f"{theirs}.bias"]
        out[o + "mlp.W_in"], out[o + "mlp.b_in"] = hf[p + "mlp.dense_h_to_4h.weight"].T, hf[p + "mlp.dense_h_to_4h.bias"]
        out[o + "mlp.W_out"], out[o + "mlp.b_out"] = hf[p + "mlp.dense_4h_to_h.weight"].T, hf[p + "mlp.dense_4h_to_h.bias"]
    return out


def _llama_config(hf: dict) -> ModelConfig:
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("Llama models with attention or MLP biases are not supported yet")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Llama activation {hf['hidden_act']!r} is not supported; expected silu")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig.parse(dict(
        n_layers=hf["num_hidden_layers"], d_model=d_model, n_heads=n_heads, d_head=hf.get("head_dim") or d_model // n_heads,
        d_mlp=hf["intermediate_size"], d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
        positional="rotary", rotary_base=_rope(hf)["theta"], normalization="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        bias=False, act_fn="silu", gated_mlp=True,
    ), where="Llama config")


def _llama_weights(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    hf = {k.removeprefix("model."): v.float() for k, v in hf.items()}
    h = cfg.n_heads
    unembed = hf.get("lm_head.weight", hf["embed_tokens.weight"])  # SmolLM2 ties them
    out = {"W_E": hf["embed_tokens.weight"], "W_U": unembed.T.contiguous(), "ln_final.w": hf["norm.weight"]}
    for i in range(cfg.n_layers):
        p, o = f"layers.{i}.", f"blocks.{i}."
        for name in "qkv":
            W = einops.rearrange(hf[p + f"self_attn.{name}_proj.weight"], "(kv e) d -> kv d e", e=cfg.d_head)
            out[o + f"attn.W_{name.upper()}"] = W.repeat_interleave(h // W.shape[0], dim=0)  # GQA: one copy per query head
        out[o + "attn.W_O"] = einops.rearrange(hf[p + "self_attn.o_proj.weight"], "d (h e) -> h e d", h=h)
        out[o + "ln1.w"], out[o + "ln2.w"] = hf[p + "input_layernorm.weight"], hf[p + "post_attention_layernorm.weight"]
        out[o + "mlp.W_gate"] = hf[p + "mlp.gate_proj.weight"].T
        out[o + "mlp.W_in"] = hf[p + "mlp.up_proj.weight"].T
        out[o + "mlp.W_out"] = hf[p + "mlp.down_proj.weight"].T
    return out


FAMILIES = {"gpt2": (_gpt2_config, _gpt2_weights), "gpt_neox": (_neox_config, _neox_weights),
            "llama": (_llama_config, _llama_weights)}


# model_type -> (its BOS id, whether text starts with it), used when the folder names no BOS:
# GPT-2's and Pythia's <|endoftext|>, Llama's <s>. All three are evaluated with BOS prepended, as
# TransformerLens's default_prepend_bos does for them (SmolLM2 reads its id, 0, from the GGUF file).
BOS = {"gpt2": (50256, True), "gpt_neox": (0, True), "llama": (1, True)}
