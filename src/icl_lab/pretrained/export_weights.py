"""The weights half of `icl-lab export --format hf`: icl-lab's weights laid out as GPT-2's,
GPT-NeoX's and Llama's state dicts. A `Residual` says how the exported residual stream holds
icl-lab's (plain, replicated, mirrored, with a constant channel for b_U); why that is exact is in
`icl_lab.pretrained.export_hf`'s docstring. Weights come out in Hugging Face's orientation: Conv1D
[in, out] for GPT-2, `nn.Linear` [out, in] for the others."""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

from icl_lab.model.config import ModelConfig
from icl_lab.model.transformer import Transformer

MIRROR_EPS = 1e12  # the exported LayerNorm's epsilon for models without normalization


@dataclass(frozen=True)
class Residual:
    """How the exported residual stream holds icl-lab's x [.., d_model]: one signed copy of x per
    entry of `signs` ((1,) plain, (1, 1) replicated, (1, -1) mirrored), and the exported head width."""

    d_model: int
    signs: tuple[int, ...]
    head_width: int
    constant: bool  # channel d_model (the second copy's first) is a constant 1 after the final norm, for b_U

    @property
    def width(self) -> int:
        return self.d_model * len(self.signs)

    @property
    def mirror(self) -> bool:
        return -1 in self.signs

    def write(self, x: Tensor) -> Tensor:
        """A write into the stream, [..., d_model] -> [..., width]."""
        return torch.cat([s * x for s in self.signs], dim=-1)

    def read(self, W: Tensor) -> Tensor:
        """A read from the stream's first copy, [d_model, k] -> [width, k]."""
        return torch.cat([W, W.new_zeros(self.width - self.d_model, W.shape[1])])

    def norm(self, w: Tensor | None, b: Tensor | None, final: bool = False) -> tuple[Tensor, Tensor]:
        """LayerNorm (weight, bias) [width] that give norm(x) on the first copy, 0 on the others
        (and the constant 1 of b_U's channel after the final norm)."""
        d = self.d_model
        w = torch.full((d,), MIRROR_EPS**0.5) if self.mirror else w
        weight, bias = torch.zeros(self.width), torch.zeros(self.width)
        weight[:d] = w
        bias[:d] = 0 if b is None or self.mirror else b
        if final and self.constant:
            bias[d] = 1.0
        return weight, bias


def residual(cfg: ModelConfig, constant: bool) -> Residual:
    """The smallest layout that holds the model exactly: r copies (mirrored without normalization,
    at least 2 for a constant channel) whose width gives each head at least d_head dimensions."""
    mirror = cfg.normalization == "none"
    r, step = (2, 2) if mirror else (2 if constant else 1, 1)
    while (r * cfg.d_model) % cfg.n_heads or r * cfg.d_model // cfg.n_heads < cfg.d_head:
        r += step
    signs = (1, -1) * (r // 2) if mirror else (1,) * r
    return Residual(cfg.d_model, signs, r * cfg.d_model // cfg.n_heads, constant)


def _bias(b: Tensor | None, *shape: int) -> Tensor:
    return torch.zeros(shape) if b is None else b.detach()


def _attention(block, res: Residual) -> dict[str, Tensor]:
    """Queries, keys and values [width, head*head_width] (and their biases), each head in the first
    d_head of its width, queries scaled so that 1/sqrt(head_width) scales them by 1/sqrt(d_head);
    and the output [head*head_width, width]."""
    a, E = block.attn, res.head_width
    h, d, e = a.W_Q.shape
    scale = math.sqrt(E / e)
    out = {}
    for name, W, b, s in (("q", a.W_Q, a.b_Q, scale), ("k", a.W_K, a.b_K, 1.0), ("v", a.W_V, a.b_V, 1.0)):
        out[name] = res.read(einops.rearrange(F.pad(W.detach() * s, (0, E - e)), "h d e -> d (h e)"))
        out["b_" + name] = F.pad(_bias(b, h, e) * s, (0, E - e)).flatten()
    out["o"] = res.write(einops.rearrange(F.pad(a.W_O.detach(), (0, 0, 0, E - e)), "h e d -> (h e) d"))
    out["b_o"] = res.write(_bias(a.b_O, d))
    return out


def _mlp(block, res: Residual) -> dict[str, Tensor]:
    """MLP input [width, d_mlp], output [d_mlp, width] and biases; width 1 and all zero for an
    attention-only block (its output is exactly 0)."""
    if not hasattr(block, "mlp"):
        return {"in": torch.zeros(res.width, 1), "b_in": torch.zeros(1), "out": torch.zeros(1, res.width), "b_out": torch.zeros(res.width)}
    m = block.mlp
    return {"in": res.read(m.W_in.detach()), "b_in": _bias(m.b_in, m.W_in.shape[1]),
            "out": res.write(m.W_out.detach()), "b_out": res.write(_bias(m.b_out, res.d_model))}


def _norm_of(module, res: Residual, final: bool = False) -> tuple[Tensor, Tensor]:
    return res.norm(getattr(module, "w", None), getattr(module, "b", None), final)


def _unembed(model: Transformer, res: Residual) -> Tensor:
    """lm_head.weight [d_vocab, width]: W_U on the first copy, b_U on the constant channel."""
    W = torch.zeros(model.cfg.d_vocab, res.width)
    W[:, : res.d_model] = model.W_U.detach().T
    if res.constant:
        W[:, res.d_model] = model.b_U.detach()
    return W


def gpt2_weights(model: Transformer, res: Residual) -> dict[str, Tensor]:
    """`GPT2LMHeadModel`'s state dict (Conv1D weights [in, out]), untied lm_head included."""
    out = {"transformer.wte.weight": res.write(model.W_E.detach()), "transformer.wpe.weight": res.write(model.W_pos.detach())}
    for i, block in enumerate(model.blocks):
        p, a, m = f"transformer.h.{i}.", _attention(block, res), _mlp(block, res)
        out |= {p + "attn.c_attn.weight": torch.cat([a["q"], a["k"], a["v"]], dim=1),
                p + "attn.c_attn.bias": torch.cat([a["b_q"], a["b_k"], a["b_v"]]),
                p + "attn.c_proj.weight": a["o"], p + "attn.c_proj.bias": a["b_o"],
                p + "mlp.c_fc.weight": m["in"], p + "mlp.c_fc.bias": m["b_in"],
                p + "mlp.c_proj.weight": m["out"], p + "mlp.c_proj.bias": m["b_out"]}
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = _norm_of(block.ln1, res)
        out[p + "ln_2.weight"], out[p + "ln_2.bias"] = _norm_of(getattr(block, "ln2", block.ln1), res)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = _norm_of(model.ln_final, res, final=True)
    out["lm_head.weight"] = _unembed(model, res)
    return out


def neox_weights(model: Transformer, res: Residual) -> dict[str, Tensor]:
    """`GPTNeoXForCausalLM`'s state dict: the fused QKV laid out [head, (q k v), head_width] along its output axis."""
    out = {"gpt_neox.embed_in.weight": res.write(model.W_E.detach())}
    h = model.cfg.n_heads
    for i, block in enumerate(model.blocks):
        p, a, m = f"gpt_neox.layers.{i}.", _attention(block, res), _mlp(block, res)
        qkv = torch.stack([a["q"], a["k"], a["v"]])  # [three, width, head*head_width]
        out |= {p + "attention.query_key_value.weight": einops.rearrange(qkv, "three d (h e) -> (h three e) d", h=h),
                p + "attention.query_key_value.bias": einops.rearrange(torch.stack([a["b_q"], a["b_k"], a["b_v"]]),
                                                                       "three (h e) -> (h three e)", h=h),
                p + "attention.dense.weight": a["o"].T, p + "attention.dense.bias": a["b_o"],
                p + "mlp.dense_h_to_4h.weight": m["in"].T, p + "mlp.dense_h_to_4h.bias": m["b_in"],
                p + "mlp.dense_4h_to_h.weight": m["out"].T, p + "mlp.dense_4h_to_h.bias": m["b_out"]}
        out[p + "input_layernorm.weight"], out[p + "input_layernorm.bias"] = _norm_of(block.ln1, res)
        ln2 = _norm_of(getattr(block, "ln2", block.ln1), res)
        out[p + "post_attention_layernorm.weight"], out[p + "post_attention_layernorm.bias"] = ln2
    out["gpt_neox.final_layer_norm.weight"], out["gpt_neox.final_layer_norm.bias"] = _norm_of(model.ln_final, res, final=True)
    out["embed_out.weight"] = _unembed(model, res)  # Pythia's name; transformers 5 renames it lm_head on load
    return out


def llama_weights(model: Transformer) -> dict[str, Tensor]:
    """`LlamaForCausalLM`'s state dict, with as many key/value heads as query heads (no tricks: Llama has any head_dim)."""
    out = {"model.embed_tokens.weight": model.W_E.detach(), "model.norm.weight": model.ln_final.w.detach(),
           "lm_head.weight": model.W_U.detach().T}
    for i, block in enumerate(model.blocks):
        p, a = f"model.layers.{i}.", block.attn
        for name, W in (("q", a.W_Q), ("k", a.W_K), ("v", a.W_V)):
            out[p + f"self_attn.{name}_proj.weight"] = einops.rearrange(W.detach(), "h d e -> (h e) d")
        out[p + "self_attn.o_proj.weight"] = einops.rearrange(a.W_O.detach(), "h e d -> d (h e)")
        out[p + "mlp.gate_proj.weight"] = block.mlp.W_gate.detach().T
        out[p + "mlp.up_proj.weight"] = block.mlp.W_in.detach().T
        out[p + "mlp.down_proj.weight"] = block.mlp.W_out.detach().T
        out[p + "input_layernorm.weight"], out[p + "post_attention_layernorm.weight"] = block.ln1.w.detach(), block.ln2.w.detach()
    return out


def partial_factor(rotary: int, head: int) -> float:
    """partial_rotary_factor whose int(head * factor) is `rotary`, as transformers computes it."""
    factor = rotary / head
    return factor if int(head * factor) == rotary else (rotary + 0.5) / head
