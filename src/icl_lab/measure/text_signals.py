"""Signals of induction on natural text that prefix matching alone can fake or miss (issue #16).

Prefix matching on repeated random tokens says a head *can* find an earlier copy. On natural text
three more things must hold before we call it the paper's phase change:

    previous-token score on real text   the head that K-composition builds on, measured on text,
                                         not on random tokens (where any offset head scores)
    repeated passage, second vs first   [BOS] p p for a validation passage p: an induction
                                         mechanism makes the second copy cheaper. Compared at the
                                         same offsets within the passage, so local context is
                                         equal and only the earlier copy differs
    ICL score on validation text         loss at token 500/512 minus token 50/512 of the context

`TextProbe` holds the fixed tokens (built once per run, seeded), `text_signals` measures one model
on them. A head that wins on one signal and not the others is a finding, not a pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.data.text import sample_windows
from icl_lab.measure.copying import copying_scores
from icl_lab.measure.evalset import rare_and_common_tokens
from icl_lab.measure.head_scores import prefix_matching_scores, previous_token_scores, repeated_random_tokens
from icl_lab.measure.induction import induction_heads, previous_token_heads
from icl_lab.measure.losses import icl_score, loss_by_token, per_token_losses
from icl_lab.measure.memory import DEFAULT_MAX_BYTES
from icl_lab.model.transformer import Transformer

PROBE_SEED = 20220308


@dataclass(frozen=True)
class TextProbe:
    """The fixed tokens every checkpoint of a run is measured on."""

    windows: Int[Tensor, "window pos"]  # validation windows, BOS first when the run uses one
    passages: Int[Tensor, "passage pos2"]  # [BOS] p p, p a validation passage of `passage_len` tokens
    passage_len: int
    repeated: Int[Tensor, "sequence pos3"]  # [BOS] s s s s, random distinct tokens (prefix matching, copying)
    seg_len: int
    first: int  # first text column (1 after a BOS column)


def repeated_passages(tokens: Int[Tensor, "example pos"], first: int) -> tuple[Int[Tensor, "example pos2"], int]:
    """[BOS] p p for each example, p its first (pos - first) // 2 text tokens; returns the
    sequences (no longer than `tokens`) and len(p). `first` is 1 after a BOS column, else 0."""
    plen = (tokens.shape[1] - first) // 2
    text = tokens[:, first : first + plen]
    return torch.cat([tokens[:, :first], text, text], dim=1), plen


def make_text_probe(val: np.ndarray, n_ctx: int, d_vocab: int, bos: int | None, n_windows: int = 64,
                    n_passages: int = 32, seed: int = PROBE_SEED) -> TextProbe:
    """Build the probe tokens from a validation split (`load_tokens(cfg.data, d_vocab).val`)."""
    gen = torch.Generator().manual_seed(seed)
    windows = sample_windows(val, n_ctx, n_windows + n_passages, gen, bos=bos).tokens
    first = 0 if bos is None else 1
    passages, plen = repeated_passages(windows[n_windows:], first)
    # as the analysis's evaluation set: no BOS, and not the 10% most and least common tokens of the text
    exclude = sorted({0 if bos is None else bos, *rare_and_common_tokens(windows, d_vocab)})
    repeated, seg_len = repeated_random_tokens(d_vocab, n_ctx, n_examples=32, seed=seed, exclude=exclude, bos=bos)
    return TextProbe(windows[:n_windows], passages, plen, repeated, seg_len, first)


def passage_losses(model: Transformer, passages: Int[Tensor, "example pos"], plen: int, first: int,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Float[Tensor, "example"], Float[Tensor, "example"]]:
    """Per-example mean loss on the first and on the second copy of `repeated_passages`, over the
    same offsets 1..plen-1 within the passage (offset 0 has no earlier copy to read from)."""
    losses = per_token_losses(model, passages, max_bytes)  # [example, pos - 1]: index i predicts token i + 1
    first_copy = losses[:, first : first + plen - 1]  # targets at passage offsets 1..plen-1
    second_copy = losses[:, first + plen : first + 2 * plen - 1]
    return first_copy.mean(1), second_copy.mean(1)


@torch.inference_mode()
def text_signals(model: Transformer, probe: TextProbe) -> dict:
    """Every signal of one model: per-head [layer][head] lists and run-level numbers.

    Returns:
        {"prefix_matching", "copying", "prev_token_text", "prev_token_random": [layer][head],
         "passage_first", "passage_second", "passage_gain" (first - second, nats), "icl" (nats),
         "induction_heads": [[layer, head], ...] by #10's rule, "prev_token_heads": the layer-0
         heads above 0.5 on text (`icl_lab.measure.induction.previous_token_heads`)}
    """
    pm = prefix_matching_scores(model, probe.repeated, probe.seg_len)
    copy = copying_scores(model, probe.repeated, first=probe.first)
    prev_text = previous_token_scores(model, probe.windows)
    prev_random = previous_token_scores(model, probe.repeated)
    first, second = (float(x.mean()) for x in passage_losses(model, probe.passages, probe.passage_len, probe.first))
    icl = icl_score(loss_by_token(per_token_losses(model, probe.windows)))
    ind = [[layer, head] for layer, head in induction_heads(
        {"layer": layer, "head": head, "prefix_matching": float(pm[layer, head]), "copying": float(copy[layer, head])}
        for layer in range(pm.shape[0]) for head in range(pm.shape[1]))]
    return {
        "prefix_matching": pm.tolist(), "copying": copy.tolist(),
        "prev_token_text": prev_text.tolist(), "prev_token_random": prev_random.tolist(),
        "passage_first": first, "passage_second": second, "passage_gain": first - second, "icl": icl,
        "induction_heads": ind, "prev_token_heads": previous_token_heads(prev_text.tolist()),
    }


def best(per_head: list[list[float]], layer: int | None = None) -> float:
    """The largest score over heads (of one layer when `layer` is given)."""
    values: Float[Tensor, "layer head"] = torch.tensor(per_head)
    return float((values if layer is None else values[layer]).max())
