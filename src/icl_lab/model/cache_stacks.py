"""The rest of TransformerLens's `ActivationCache` maths, as a mixin of `ActivationCache`: every
neuron's output (`stack_neuron_results`), the full decomposition of a residual stream into heads,
neurons, embeddings and biases (`get_full_resid_decomposition`), stacking any activation over layers
(`stack_activation`), storing every head's result (`compute_head_results`) and dropping the batch
axis (`remove_batch_dim`). Equal to TransformerLens 3.9 on exported weights (tests/model/test_lens_parity.py)."""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_lab.errors import ConfigError

Stack = Float[Tensor, "component *batch_and_pos d_model"]


def at_pos(x: Tensor, pos_slice, pos_dim: int = -2) -> Tensor:
    """x with `pos_slice` taken on its position axis (an int drops the axis)."""
    if pos_slice is None:
        return x
    index = [slice(None)] * x.ndim
    index[pos_dim] = pos_slice
    return x[tuple(index)]


class StacksMixin:
    """Stacks of `ActivationCache` (a mixin: it reads `_store`, `model`, `_layer`, `head_results`,
    `stack_head_results`, `decompose_resid` and `apply_ln_to_stack`)."""

    def remove_batch_dim(self):
        """Drop the batch axis of every activation (a batch of one only), in place; returns the cache.

        Raises:
            ConfigError: the batch holds more than one sequence.
        """
        sizes = {v.shape[0] for v in self._store.values() if v.ndim}
        if sizes - {1}:
            raise ConfigError(f"remove_batch_dim needs a batch of one, got batch sizes {sorted(sizes)}")
        self._store = {k: v[0] if v.ndim else v for k, v in self._store.items()}
        return self

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> Tensor:
        """One activation of every layer before `layer` (-1 or None: all), stacked: [layer, ...]."""
        layer = self._layer(layer)
        return torch.stack([self[(activation_name, l, sublayer_type)] for l in range(layer)])

    def compute_head_results(self) -> None:
        """Store every head's output z @ W_O ([batch, pos, head, d_model], without b_O) as
        `blocks.{l}.attn.hook_result`, from the cached `hook_z`."""
        for l in range(self._need_model().cfg.n_layers):
            self._store[f"blocks.{l}.attn.hook_result"] = self.head_results(l)

    def stack_neuron_results(
        self, layer: int, pos_slice=None, neuron_slice=None, return_labels: bool = False,
        incl_remainder: bool = False, apply_ln: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """Every MLP neuron's output post[n] * W_out[n] (without b_out) in the layers before
        `layer`: [layer * d_mlp, batch, pos, d_model], labels "L0N0", ...

        Args:
            neuron_slice: keep only these neurons of each layer (an int or a slice).
            incl_remainder: add the rest of the stream (resid_post of layer-1 minus the neurons).
            apply_ln: scale by the cached norm scale of `layer`'s input.
        """
        model = self._need_model()
        layer = self._layer(layer)
        if model.cfg.attn_only:
            raise ConfigError("an attention-only model has no neurons; use stack_head_results")
        neurons = range(model.cfg.d_mlp)
        kept = neurons[neuron_slice] if isinstance(neuron_slice, slice) else neurons if neuron_slice is None else [neurons[neuron_slice]]
        idx = torch.as_tensor(list(kept), dtype=torch.long)
        parts, labels = [], []
        for l in range(layer):
            post = at_pos(self["post", l], pos_slice)[..., idx]  # [batch, pos, neuron]
            W_out = model.blocks[l].mlp.W_out[idx].to(post.device, post.dtype)  # [neuron, d_model]
            parts.append(einops.rearrange(post[..., None] * W_out, "... neuron d_model -> neuron ... d_model"))
            labels += [f"L{l}N{n}" for n in kept]
        shape = at_pos(self["embed"], pos_slice).shape
        stack = torch.cat(parts) if parts else self["embed"].new_zeros((0, *shape))
        if incl_remainder:
            rest = at_pos(self["resid_post", layer - 1], pos_slice) if layer else at_pos(self["resid_pre", 0], pos_slice)
            stack = torch.cat([stack, (rest - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(
        self, layer: int | None = None, mlp_input: bool = False, expand_neurons: bool = True,
        apply_ln: bool = False, pos_slice=None, return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream before `layer` as the sum of every head, every neuron (or each
        MLP's output, without `expand_neurons`), the embeddings and the biases, in
        TransformerLens's order: heads, neurons or MLPs, "embed", "pos_embed" (learned positions
        only: shortformer positions never enter the stream), "bias".

        Returns:
            [component, batch, pos, d_model] (and the labels); summed, it is the stream.
        """
        model, layer = self._need_model(), self._layer(layer)
        stack, labels = self.stack_head_results(layer + (1 if mlp_input else 0), pos_slice=pos_slice, return_labels=True)
        parts = [stack]
        if not model.cfg.attn_only and layer > 0:
            if expand_neurons:
                more, names = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True)
            else:
                more, names = self.decompose_resid(layer, mlp_input=mlp_input, pos_slice=pos_slice, incl_embeds=False,
                                                   mode="mlp", return_labels=True)
            parts.append(more)
            labels = labels + names
        parts.append(at_pos(self["embed"], pos_slice)[None])
        labels = labels + ["embed"]
        if model.cfg.positional == "learned":
            parts.append(at_pos(self["pos_embed"], pos_slice)[None])
            labels.append("pos_embed")
        bias = model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons).to(stack.device, stack.dtype)
        parts.append(bias.expand((1, *stack.shape[1:])))
        labels.append("bias")
        out = torch.cat(parts)
        if apply_ln:
            out = self.apply_ln_to_stack(out, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (out, labels) if return_labels else out
