"""Loss by context position and the in-context-learning score, after Olsson et al. (2022),
"In-context Learning and Induction Heads", section "Key Concepts": the ICL score is the loss on
the 500th token of a context minus the loss on the 50th, averaged over examples; negative means
later tokens are easier, i.e. the model learns in context.

Token indices are 0-based positions of the *predicted* token: the loss "at token t" is the loss of
predicting tokens[:, t] from tokens[:, :t], i.e. `per_token_loss[:, t - 1]`."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_lab.measure.memory import DEFAULT_MAX_BYTES, forward_row_bytes, rows_per_chunk
from icl_lab.model.transformer import Transformer

PAPER_CONTEXT, PAPER_EARLY, PAPER_LATE = 512, 50, 500


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """The (early, late) token indices of the ICL score for a context of `n_ctx` tokens.

    Olsson et al. use tokens 50 and 500 of a 512-token context. Shorter (or longer) contexts keep
    the same fractions of the context: early = round(50/512 * n_ctx), late = round(500/512 * n_ctx),
    clipped to [1, n_ctx - 1] and kept distinct. n_ctx=512 gives (50, 500); n_ctx=64 gives (6, 63).
    """
    early = min(max(1, int(PAPER_EARLY / PAPER_CONTEXT * n_ctx + 0.5)), n_ctx - 2)
    late = min(max(early + 1, int(PAPER_LATE / PAPER_CONTEXT * n_ctx + 0.5)), n_ctx - 1)
    return early, late


@torch.inference_mode()
def per_token_losses(model: Transformer, tokens: Int[Tensor, "batch pos"], max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-token loss on `tokens`, as many sequences at a time as keep one forward's activations
    and logits under `max_bytes` (`icl_lab.measure.memory.forward_row_bytes`; at least one),
    under inference mode with fused attention. Returned on the CPU."""
    device = next(model.parameters()).device
    row = forward_row_bytes(model.cfg, tokens.shape[1], next(model.parameters()).element_size())
    chunk = rows_per_chunk(row, max_bytes, len(tokens))
    return torch.cat([model.per_token_loss(tokens[i : i + chunk].to(device)).cpu() for i in range(0, len(tokens), chunk)])


def loss_by_token(per_token: Float[Tensor, "batch pos_minus_1"]) -> Float[Tensor, "pos"]:
    """Mean loss at each token index: [pos], with NaN at index 0 (the first token has no prediction)."""
    return torch.cat([torch.tensor([float("nan")]), per_token.mean(0)])


def icl_score(loss_at_token: Float[Tensor, "pos"]) -> float:
    """Loss at the late token minus loss at the early token (see `icl_positions`), in nats."""
    early, late = icl_positions(len(loss_at_token))
    return float(loss_at_token[late] - loss_at_token[early])


def dloss_dlnpos(loss_at_token: Float[Tensor, "pos"]) -> np.ndarray:
    """d loss / d ln(token index) at token indices 1..pos-1 (finite differences on a log axis):
    the per-position view of in-context learning that the paper plots as a heatmap over training."""
    t = np.arange(1, len(loss_at_token))
    return np.gradient(loss_at_token[1:].double().numpy(), np.log(t))


WINDOW_EARLY, WINDOW_LATE = (0.08, 0.12), (0.90, 1.00)  # shares of the context around the paper's 50/512 and 500/512


def icl_windows(n_ctx: int) -> tuple[list[int], list[int]]:
    """The token indices of the *window* ICL score: every token in the 8-12% of the context (about
    the paper's token 50 of 512) and in its last 10% (about token 500). Averaging a window per
    example cuts the per-example spread of the single-token score about threefold on text, which is
    what lets ablation shares on 256 windows carry usable intervals (docs/decisions.md, 28).
    n_ctx 256: tokens 20-31 and 230-255."""
    lo, hi = max(1, round(WINDOW_EARLY[0] * n_ctx)), max(1, round(WINDOW_EARLY[1] * n_ctx))
    late = list(range(max(hi + 1, round(WINDOW_LATE[0] * n_ctx)), n_ctx))
    return list(range(lo, hi + 1)), late


def window_icl_scores(per_token: Float[Tensor, "... pos_minus_1"], n_ctx: int) -> Float[Tensor, "..."]:
    """The window ICL score of each row of per-token losses: mean loss over the late window minus
    the mean over the early window (index t predicts token t + 1)."""
    early, late = icl_windows(n_ctx)
    return per_token[..., [t - 1 for t in late]].mean(-1) - per_token[..., [t - 1 for t in early]].mean(-1)
