"""`ActivationCache`: the activations of one forward pass by hook name, with the maths of the
residual stream attached, as TransformerLens's cache: the logit lens (`accumulated_resid`), the
residual stream split into what each layer (`decompose_resid`) or head (`stack_head_results`)
wrote, the final norm's scaling of such a stack (`apply_ln_to_stack`) and direct logit
attribution (`logit_attrs`). `model.run_with_cache` builds one; it saves to and loads from one
safetensors file.

The maths follows TransformerLens 3.9 on the same weights (tested to 1e-5), with one difference:
`logit_attrs` multiplies the final norm's gain into the unembedding directions, because icl-lab's
models keep the norm's weights unfolded (TransformerLens folds them first); the attributions of
`decompose_resid()` then sum to the logits less a constant (the norm's bias times W_U, and b_U).

Example:
    >>> logits, cache = model.run_with_cache(tokens)
    >>> stack, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)   # [component, batch, d_model]
    >>> cache.logit_attrs(stack, answers, pos_slice=-1)   # [component, batch]: each piece's share of the logit
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.io import write_safetensors
from icl_lab.model.cache_stacks import StacksMixin, at_pos
from icl_lab.model.names import get_act_name

_SHORT = {
    "embed": "hook_embed", "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre", "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post", "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out", "q": "blocks.{l}.attn.hook_q", "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v", "z": "blocks.{l}.attn.hook_z", "result": "blocks.{l}.attn.hook_result",
    "rot_q": "blocks.{l}.attn.hook_rot_q", "rot_k": "blocks.{l}.attn.hook_rot_k", "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern", "pre": "blocks.{l}.mlp.hook_pre",
    "post": "blocks.{l}.mlp.hook_post",
}
FORMAT = "icl-lab-activation-cache-1"
PosSlice = Union[int, slice, None]
Stack = Float[Tensor, "component *batch_and_pos d_model"]


def hook_name(short: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one, by TransformerLens's `get_act_name` rules:
    hook_name("pattern", 1) == "blocks.1.attn.hook_pattern", hook_name("scale") == "ln_final.hook_scale".

    Raises:
        ConfigError: a per-layer name without a layer, or TransformerLens's per-head `attn_in`,
            which icl-lab's heads do not have (they share one input).
    """
    if short in _SHORT and "{l}" in _SHORT[short] and layer is None:
        raise ConfigError(f"hook {short!r} is per layer; pass a layer, e.g. cache[{short!r}, 0]")
    if short in ("attn_in", "q_input", "k_input", "v_input"):
        raise ConfigError(f"icl-lab has no per-head {short!r} hook (its heads share one input): read cache['resid_pre', l] "
                          "or blocks.{l}.ln1.hook_normalized, and patch one head through hook_q / hook_k / hook_v")
    return get_act_name(short, layer, layer_type)


class ActivationCache(StacksMixin, Mapping[str, Tensor]):
    """Hook name -> activation. Shorthand keys work: `cache["pattern", 1]`, `cache["resid_pre", 0]`.

    Attributes:
        model: the `Transformer` that produced it (None for a cache loaded without one); the
            maths methods need it for its weights and config.
    """

    def __init__(self, store: dict[str, Tensor], model=None) -> None:
        self._store = store
        self.model = model

    def _key(self, key: str | tuple) -> str:
        if not isinstance(key, tuple):
            return hook_name(key)
        name, layer, layer_type = (*key, None, None)[:3]
        if layer is not None and layer < 0:  # from the end, as TransformerLens: cache["resid_pre", -1]
            layer += self._need_model().cfg.n_layers
        return hook_name(name, layer, layer_type)

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        if name not in self._store:
            raise KeyError(f"{name!r} was not cached; widen names_filter in run_with_cache")
        return self._store[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"

    def layers(self, short: str) -> Tensor:
        """Stack one activation over layers: cache.layers("pattern") -> [layer, ...]."""
        found = sorted(
            (int(m.group(1)), v) for k, v in self._store.items()
            if (m := re.fullmatch(hook_name(short, 0).replace("blocks.0", r"blocks\.(\d+)"), k))
        )
        if not found:
            raise KeyError(f"no cached {short!r} activations; widen names_filter in run_with_cache")
        return torch.stack([v for _, v in found])

    # ---- moving and storing ----------------------------------------------------------------
    def to(self, device: str | torch.device) -> "ActivationCache":
        """Move every activation to `device` (in place); returns the cache. The model stays."""
        self._store = {k: v.to(device) for k, v in self._store.items()}
        return self

    def save(self, path: str | Path) -> Path:
        """Write the activations to one safetensors file (atomically); returns its path."""
        # cloned: some activations share memory (resid_post of layer l is resid_pre of l+1),
        # which safetensors refuses to write
        return write_safetensors(path, {k: v.detach().cpu().clone() for k, v in self._store.items()}, {"format": FORMAT})

    @classmethod
    def load(cls, path: str | Path, model=None, device: str | torch.device = "cpu") -> "ActivationCache":
        """Read a cache written by `save`; pass the `model` it came from to use its maths.

        Raises:
            CheckpointError: the file is missing, unreadable, or not a saved cache.
        """
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                if (f.metadata() or {}).get("format") != FORMAT:
                    raise CheckpointError(f"{path} is not a saved ActivationCache; write one with cache.save(path)")
                store = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read cache {path} ({(str(e).splitlines() or [''])[0][:80]}); check the path") from None
        return cls(store, model=model)

    # ---- residual stream maths ---------------------------------------------------------------
    def _need_model(self):
        if self.model is None:
            raise ConfigError("this cache has no model; pass model= to ActivationCache.load, or use model.run_with_cache")
        return self.model

    def _layer(self, layer: int | None) -> int:
        n_layers = self._need_model().cfg.n_layers
        if layer is None or layer == -1:
            return n_layers
        if not 0 <= layer <= n_layers:
            raise ConfigError(f"layer {layer} is outside 0..{n_layers} (or -1 / None for the unembedding)")
        return layer

    def accumulated_resid(
        self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
        pos_slice: PosSlice = None, mlp_input: bool = False, return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream as it stands before each layer up to `layer`: the logit lens.

        Args:
            layer: the last layer whose input is included; None or -1 (or n_layers) adds the
                final residual stream, the unembedding's input.
            incl_mid: also include `resid_mid` of every earlier layer.
            apply_ln: scale by that layer's cached norm scale (`apply_ln_to_stack`); at the
                unembedding, apply the whole final norm to each entry, as the logit lens does.
            pos_slice: keep only these positions (an int drops the position axis).
            mlp_input: also include `resid_mid` of `layer` (the MLP's input).
            return_labels: also return labels such as "0_pre", "1_mid", "final_post".

        Returns:
            [component, batch, pos, d_model] (and the labels).

        Raises:
            KeyError: a residual stream was not cached.
        """
        model, layer = self._need_model(), self._layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == model.cfg.n_layers:
                parts.append(self["resid_post", l - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([at_pos(p, pos_slice) for p in parts])
        if apply_ln and layer == model.cfg.n_layers:
            stack = model.ln_final(stack)  # recomputed statistics per entry: each is read as a final stream
        elif apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self, layer: int | None = None, mlp_input: bool = False, mode: str = "all", apply_ln: bool = False,
        pos_slice: PosSlice = None, incl_embeds: bool = True, return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream before `layer` split into what wrote it: the embeddings and each
        earlier layer's attention and MLP output (biases included). Summed, it gives the stream.

        Args:
            layer: the layer whose input is decomposed; None or -1 is the unembedding's input.
            mlp_input: decompose the MLP's input of `layer` (adds that layer's attention output).
            mode: "all", "attn" or "mlp": which layer outputs to include.
            apply_ln: scale by the cached norm scale of that input (`apply_ln_to_stack`).
            pos_slice: keep only these positions (an int drops the position axis).
            incl_embeds: include the token (and learned positional) embedding.
            return_labels: also return labels such as "embed", "0_attn_out", "1_mlp_out".

        Returns:
            [component, batch, pos, d_model] (and the labels).

        Raises:
            ConfigError: an unknown mode.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ConfigError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        model, layer = self._need_model(), self._layer(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["embed"])
            labels.append("embed")
            if model.cfg.positional == "learned":  # shortformer positions never enter the stream
                parts.append(self["pos_embed"])
                labels.append("pos_embed")
        mlp = mode != "attn" and not model.cfg.attn_only
        for l in range(layer):
            if mode != "mlp":
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mlp:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([at_pos(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def head_results(self, layer: int, pos_slice: PosSlice = None) -> Float[Tensor, "*batch_and_pos head d_model"]:
        """What each head of `layer` writes to the residual stream, z @ W_O per head (without
        b_O): [batch, pos, head, d_model], the cached `attn.hook_result` if there is one, else
        from the cached `hook_z`."""
        if hook_name("result", layer) in self:
            return at_pos(self["result", layer], pos_slice, pos_dim=1)
        z = at_pos(self["z", layer], pos_slice, pos_dim=1)  # [batch, pos, head, d_head]
        W_O = self._need_model().blocks[layer].attn.W_O.to(z.device, z.dtype)
        return einops.einsum(z, W_O, "... head d_head, head d_head d_model -> ... head d_model")

    def stack_head_results(
        self, layer: int | None = None, return_labels: bool = False, incl_remainder: bool = False,
        pos_slice: PosSlice = None, apply_ln: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """Every head's output in the layers before `layer`, stacked: computed from the cached
        `hook_z` and W_O (no head-result hook is needed).

        Args:
            layer: heads of layers [0, layer) are included; None or -1 means all layers.
            return_labels: also return labels "L0H0", "L0H1", ...
            incl_remainder: add one last entry, the rest of the residual stream (resid_post of
                layer-1 minus the heads), so the stack sums to the stream.
            pos_slice: keep only these positions (an int drops the position axis).
            apply_ln: scale by the cached norm scale of `layer`'s input.

        Returns:
            [layer * head (+1), batch, pos, d_model] (and the labels).
        """
        model, layer = self._need_model(), self._layer(layer)
        labels = [f"L{l}H{h}" for l in range(layer) for h in range(model.cfg.n_heads)]
        shape = at_pos(self["embed"], pos_slice).shape
        if layer:
            per_head = torch.stack([self.head_results(l, pos_slice) for l in range(layer)])  # [layer, ..., head, d_model]
            stack = einops.rearrange(per_head, "layer ... head d_model -> (layer head) ... d_model")
        else:
            stack = self["embed"].new_zeros((0, *shape))
        if incl_remainder:
            rest = at_pos(self["resid_post", layer - 1], pos_slice) if layer else at_pos(self["resid_pre", 0], pos_slice)
            stack = torch.cat([stack, (rest - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self, residual_stack: Stack, layer: int | None = None, mlp_input: bool = False, pos_slice: PosSlice = None,
    ) -> Stack:
        """Scale a stack of residual-stream pieces as the norm before `layer` scales the whole
        stream: centre each piece (LayerNorm only) and divide by the cached scale, which comes from
        the whole stream, so the pieces still add up. The norm's weight and bias are not applied.
        Unchanged for a model without norms.

        Args:
            residual_stack: [component, batch, pos, d_model] (positions already cut by `pos_slice`).
            layer: whose input norm: None or -1 is the final norm; else ln1 (ln2 with `mlp_input`).
            pos_slice: the positions the stack holds, to cut the cached scale alike.

        Raises:
            KeyError: the norm's `hook_scale` was not cached.
        """
        model, layer = self._need_model(), self._layer(layer)
        if model.cfg.normalization == "none":
            return residual_stack
        if model.cfg.normalization == "layernorm":
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        if layer == model.cfg.n_layers:
            name = "ln_final.hook_scale"
        else:
            name = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        return residual_stack / at_pos(self[name], pos_slice)

    def logit_attrs(
        self, residual_stack: Stack, tokens: Int[Tensor, "*batch_and_pos"] | str | int,
        incorrect_tokens: Int[Tensor, "*batch_and_pos"] | str | int | None = None, pos_slice: PosSlice = None,
    ) -> Float[Tensor, "component *batch_and_pos"]:
        """Direct logit attribution: each piece's contribution to the logit of `tokens` (minus
        that of `incorrect_tokens`). As in TransformerLens, the stack is first scaled by the final
        norm's cached scale (`apply_ln_to_stack`), so pass it unscaled; the unembedding is read
        times the final norm's gain.

        Args:
            residual_stack: [component, batch, pos, d_model] (or [component, batch, d_model] with
                an int `pos_slice`), e.g. from `decompose_resid` or `stack_head_results`.
            tokens: [batch, pos] (or [batch]) token ids whose logits to attribute, or one token
                for every row (a string of one token or an id).
            incorrect_tokens: ids of the same shape (or one token), for a logit difference.
            pos_slice: the positions the stack holds.

        Returns:
            [component, batch, pos] (or [component, batch]).

        Raises:
            ConfigError: tokens of another shape than the stack's batch and position axes.
        """
        model = self._need_model()
        tokens, incorrect_tokens = (t if t is None or isinstance(t, Tensor) else
                                    torch.as_tensor(model.to_single_token(t) if isinstance(t, str) else t)
                                    for t in (tokens, incorrect_tokens))
        if tokens.ndim == 0:  # one token for every row and position
            tokens = tokens.expand(residual_stack.shape[1:-1])
        if incorrect_tokens is not None and incorrect_tokens.ndim == 0:
            incorrect_tokens = incorrect_tokens.expand(residual_stack.shape[1:-1])
        if tuple(tokens.shape) != tuple(residual_stack.shape[1:-1]):
            raise ConfigError(f"tokens {tuple(tokens.shape)} do not match the stack's batch and position axes "
                              f"{tuple(residual_stack.shape[1:-1])}")
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        W_U = model.W_U
        if model.cfg.normalization != "none":
            W_U = model.ln_final.w[:, None] * W_U  # the gain the unfolded final norm applies
        W_U = W_U.to(scaled.device, scaled.dtype)
        direction = W_U[:, tokens.to(W_U.device)].movedim(0, -1)  # [*batch_and_pos, d_model]
        if incorrect_tokens is not None:
            direction = direction - W_U[:, incorrect_tokens.to(W_U.device)].movedim(0, -1)
        return (scaled * direction).sum(-1)
