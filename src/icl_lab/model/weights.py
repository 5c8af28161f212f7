"""A `Transformer`'s weights stacked over layers, in TransformerLens's names and orientation:
`W_Q [layer, head, d_model, d_head]`, `b_O [layer, d_model]`, `W_in [layer, d_model, d_mlp]`, the
`QK` and `OV` circuits as factored matrices, `W_E_pos`, and the sum of the biases written into the
residual stream (`accumulated_bias`). A bias the model was built without reads as zeros, as in
TransformerLens (which always has biases), so the same code runs on every model."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.model.factored import Factored


class WeightsMixin:
    """Stacked weights of `Transformer` (a mixin: it reads `cfg`, `blocks`, `W_E`, `W_pos`, `W_U`)."""

    def _stack(self, name: str, part: str = "attn", shape: tuple[int, ...] = ()) -> Tensor:
        if part == "mlp" and self.cfg.attn_only:
            raise ConfigError(f"{name} does not exist in an attention-only model (d_mlp=0)")
        found = [getattr(getattr(b, part), name, None) for b in self.blocks]
        if all(p is None for p in found):
            if not shape:
                raise ConfigError(f"this model has no {name}")
            return self.W_E.new_zeros((self.cfg.n_layers, *shape))  # built without biases: zeros, as TransformerLens
        return torch.stack(found)

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

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("b_Q", shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("b_K", shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("b_V", shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("b_O", shape=(self.cfg.d_model,))

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("W_in", "mlp")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("W_gate", "mlp")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("W_out", "mlp")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("b_in", "mlp", shape=(self.cfg.d_mlp,))

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("b_out", "mlp", shape=(self.cfg.d_model,))

    @property
    def QK(self) -> Factored:
        """W_Q W_K^T of every head, [layer, head, d_model, d_model], factored."""
        return Factored(self.W_Q, self.W_K.transpose(-1, -2))

    @property
    def OV(self) -> Factored:
        """W_V W_O of every head, [layer, head, d_model, d_model], factored."""
        return Factored(self.W_V, self.W_O)

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """The token and positional embeddings concatenated, [d_vocab + n_ctx, d_model] (learned
        or shortformer positions; a rotary model has no positional embedding to add)."""
        if not hasattr(self, "W_pos"):
            raise ConfigError("a rotary model has no positional embedding; use W_E")
        return torch.cat([self.W_E, self.W_pos], dim=0)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
        """The biases written into the residual stream before `layer` (each attention's b_O and,
        with `include_mlp_biases`, each MLP's b_out); `mlp_input` adds `layer`'s own b_O."""
        total = self.W_E.new_zeros(self.cfg.d_model)
        for i in range(layer + (1 if mlp_input else 0)):
            total = total + self.b_O[i]
            if include_mlp_biases and not self.cfg.attn_only and i < layer:
                total = total + self.b_out[i]
        return total
