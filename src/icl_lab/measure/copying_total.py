"""Copying through the model: does what a head writes raise the logit of the token it attends to,
by every path to the logits, not only the direct one? (Issue #27; docs/decisions.md, decision 26.)

`copying` (icl_lab.measure.copying) reads a head's output through the final norm and unembedding
alone. A head whose output later layers read and turn into the prediction (SmolLM2's layer-17/18
prefix matchers: ablating them breaks copying, their direct copying is ~0) scores nothing there.
`copying_total` measures the head's whole effect, by path patching from its output to the logits:

- on the repeated random sequences prefix matching uses, at each query position in a later repeat,
  the head's own output is removed (its z zeroed at every position) and everything downstream is
  recomputed, patterns included; the change of the logits, clean minus ablated, is the head's
  total effect at that position;
- the token the head attends to most there (its top key, BOS excluded) is its *attended token*;
  q is the share of the shared competitor set C whose logit the effect raises less than the
  attended token's (ties one half), and `copying_total = 2 mean q - 1`, as for `copying`: +1 for a
  head whose total effect copies, about 0 for one that does not.

The `null` is the same statistic for another token of the sequence in place of the attended one
(about 0 for any head), and the `margin` the attended token's z-score among the competitors.
Heads are scored in batched copies of the sequences, starting at their own layer from the clean
residual stream (`start_at_layer`), within a memory budget."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.measure.copying import COMPETITORS, compare_to_competitors, competitor_set
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes, rows_per_chunk
from icl_lab.model.transformer import Transformer


@torch.inference_mode()
def copying_total_statistics(
    model: Transformer, tokens: Int[Tensor, "batch pos"], seg_len: int, heads: Sequence[tuple[int, int]], first: int = 1,
    competitors: int = COMPETITORS, seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Float[Tensor, "batch head"]]:
    """`copying_total`, its `null` and its `margin` for each of `heads`, per sequence.

    Args:
        tokens: [batch, pos] repeated random sequences ([BOS] s s s s), period `seg_len`.
        heads: (layer, head) pairs to score, e.g. the heads whose prefix matching makes them candidates.
        first: the first content column (1 after a BOS column).

    Returns:
        {"copying_total", "null", "margin"}: [batch, len(heads)] each.
    """
    device = model.W_U.device
    tokens = tokens.to(device)
    batch, n_pos = tokens.shape
    rows = torch.arange(first + seg_len, n_pos, device=device)  # queries in a later repeat: their next token occurred before
    layers = sorted({layer for layer, _ in heads})
    clean = _clean_pass(model, tokens, layers, list(heads), rows, first, max_bytes)
    comp = competitor_set(model.cfg.d_vocab, competitors, seed).to(device)
    attended = tokens.gather(1, clean["top_key"].flatten(1)).view(batch, len(heads), len(rows))  # [batch, head, row]
    other = tokens[:, first:].gather(1, torch.randint(0, n_pos - first, (batch, len(rows)), device=device,
                                                      generator=torch.Generator(device=device).manual_seed(seed + 3)))
    out = {name: torch.empty(batch, len(heads)) for name in ("copying_total", "null", "margin")}
    clean_normed = model.ln_final(clean["final"])  # [batch, row, d_model]
    for i, (layer, head) in enumerate(heads):
        ablated_normed = model.ln_final(_ablated_final(model, clean["resid"][layer], layer, head, rows, max_bytes))
        for name, target in (("copying_total", attended[:, i]), ("null", other)):
            # the change of the logits, clean minus ablated, through the whole final norm: exact, at C and the target only
            own = _logit(model, clean_normed, target) - _logit(model, ablated_normed, target)  # [batch, row]
            rivals = clean_normed @ model.W_U[:, comp] - ablated_normed @ model.W_U[:, comp]  # [batch, row, |C|]
            q, margin = compare_to_competitors(own.flatten(), rivals.flatten(0, 1), target.flatten(), comp)
            out[name][:, i] = (2 * q - 1).view(batch, -1).mean(-1).float().cpu()
            if name == "copying_total":
                out["margin"][:, i] = margin.view(batch, -1).mean(-1).float().cpu()
    return out


def _logit(model: Transformer, normed: Tensor, target: Tensor) -> Tensor:
    """normed [batch, row, d_model] times the unembedding column of target [batch, row] (the bias,
    equal in both runs, cancels in a difference and is left out)."""
    return (normed * model.W_U.T[target]).sum(-1)


def _clean_pass(model: Transformer, tokens: Tensor, layers: list[int], heads: list[tuple[int, int]], rows: Tensor,
                first: int, max_bytes: int) -> dict:
    """The clean run, streamed: the residual stream entering each of `layers`, the final residual
    at `rows`, and each head's most-attended key (>= first) at every row: [batch, head, row]."""
    cfg, itemsize = model.cfg, model.W_U.element_size()
    batch, n_pos = tokens.shape
    resid = {layer: torch.empty(batch, n_pos, cfg.d_model, dtype=model.W_U.dtype, device=tokens.device) for layer in layers}
    final = torch.empty(batch, len(rows), cfg.d_model, dtype=model.W_U.dtype, device=tokens.device)
    top = torch.empty(batch, len(heads), len(rows), dtype=torch.long, device=tokens.device)
    held = len(layers) * n_pos * cfg.d_model * itemsize
    chunk = rows_per_chunk(held + forward_row_bytes(cfg, n_pos, itemsize, logits=False, patterns=True), max_bytes // 2, batch)
    for start in range(0, batch, chunk):
        sl = slice(start, start + chunk)

        def keep(x: Tensor, *, hook) -> None:  # resid_pre [batch, pos, d_model]
            resid[int(hook.name.split(".")[1])][sl] = x

        def attend(pattern: Tensor, *, hook) -> None:  # [batch, head, query_pos, key_pos]
            layer = int(hook.name.split(".")[1])
            for i, (l, h) in enumerate(heads):
                if l == layer:
                    top[sl, i] = pattern[:, h][:, rows, first:].argmax(-1) + first

        hooks = [(f"blocks.{layer}.hook_resid_pre", keep) for layer in layers]
        hooks += [(f"blocks.{layer}.attn.hook_pattern", attend) for layer in layers]
        out = model.run_with_hooks(tokens[sl], fwd_hooks=hooks, stop_at_layer=cfg.n_layers)  # [chunk, pos, d_model]
        final[sl] = out[:, rows]
    return {"resid": resid, "final": final, "top_key": top}


def _ablated_final(model: Transformer, resid: Tensor, layer: int, head: int, rows: Tensor, max_bytes: int) -> Tensor:
    """The final residual at `rows` with `head` of `layer` zero-ablated at every position, from the
    clean residual entering its layer, everything after recomputed (patterns too)."""
    cfg, itemsize = model.cfg, model.W_U.element_size()
    chunk = rows_per_chunk(forward_row_bytes(cfg, resid.shape[1], itemsize, logits=False), max_bytes // 2, len(resid))

    def zero(z: Tensor, *, hook) -> Tensor:  # [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, head] = 0
        return z

    parts = [model.run_with_hooks(resid[i : i + chunk], fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)],
                                  start_at_layer=layer, stop_at_layer=cfg.n_layers)[:, rows]
             for i in range(0, len(resid), chunk)]
    return torch.cat(parts)
