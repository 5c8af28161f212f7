"""Weight-based head scores from the OV circuit's direct path, following Olsson et al. (2022),
"In-context Learning and Induction Heads", Model Analysis Table ("copying" and OV eigenvalue
positivity), and Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits".

The direct-path OV circuit of head (l, h) maps a source token to logits: W_E W_V W_O W_U, a
[d_vocab, d_vocab] matrix that is never formed in full for the eigenvalues (its non-zero spectrum
equals that of the small [d_head, d_head] product W_O W_U W_E W_V). LayerNorm is ignored, as in
the paper. Scores are `[layer, head]` tensors."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from icl_lab.model.transformer import Transformer


@torch.inference_mode()
def copying_scores(model: Transformer, max_sources: int = 512, budget: int = 2**25, seed: int = 0) -> Float[Tensor, "layer head"]:
    """Copying score of every head: how much its direct-path OV circuit raises the logit of the
    token it attends to.

    For each source token t: logits = W_E[t] W_V W_O W_U, minus their mean over the vocabulary,
    through a ReLU; the share of what remains that falls on t itself, averaged over t, is s in
    [0, 1]. Following the paper's presentation, s is rescaled from 0..0.5 to -1..1 and clipped:
    score = clip(4 s - 1, -1, 1). A head whose OV circuit is the identity scores 1; its negation
    (which lowers the attended token and so raises all others) scores -1.

    Vocabularies larger than `max_sources` average over a fixed random sample of that many source
    tokens (the logits still span the whole vocabulary); the rows are computed through the
    d_head-wide factors, `budget` logits at a time, so a 49k-token, 270-head model fits in memory.

    Note: the ReLU keeps the positive half of the off-token noise, which grows with the
    vocabulary: the trained `synthetic-2l` induction head (top-1 copy on 99% of tokens, own logit
    raised by 13.3 against an off-token spread of 2.8) has s = 0.094, so a score of -0.63.
    Read it next to `ov_eigen_positivity` (0.999 for that head).
    """
    W_E, W_U = model.W_E, model.W_U  # [d_vocab, d_model], [d_model, d_vocab]
    n_vocab = W_E.shape[0]
    sources = torch.arange(n_vocab)
    if n_vocab > max_sources:
        sources = torch.randperm(n_vocab, generator=torch.Generator().manual_seed(seed))[:max_sources].sort().values
    share_sum = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer, block in enumerate(model.blocks):
        W_V, W_O = block.attn.W_V, block.attn.W_O  # [head, d_model, d_head], [head, d_head, d_model]
        chunk = max(1, budget // (model.cfg.n_heads * n_vocab))
        for start in range(0, len(sources), chunk):  # [head, chunk, d_vocab] logits at a time
            rows = sources[start : start + chunk].to(W_E.device)
            logits = torch.einsum("td,hde,hef,fv->htv", W_E[rows], W_V, W_O, W_U)
            raised = (logits - logits.mean(-1, keepdim=True)).relu()
            own = raised[:, torch.arange(len(rows)), rows]  # [head, token]
            share_sum[layer] += (own / raised.sum(-1).clamp_min(1e-12)).sum(-1).cpu()
    share = share_sum / len(sources)
    return (4 * share - 1).clamp(-1, 1)


@torch.inference_mode()
def ov_eigen_positivity(model: Transformer) -> Float[Tensor, "layer head"]:
    """OV eigenvalue positivity sum(lambda) / sum(|lambda|) of W_E W_V W_O W_U for every head
    (Elhage et al. 2021): 1 when the circuit copies (all eigenvalues positive), -1 when it
    anti-copies. Computed from the [d_head, d_head] product W_O W_U W_E W_V, which has the same
    non-zero eigenvalues."""
    unembed_embed = model.W_U @ model.W_E  # [d_model, d_model] first: never a [layer, head, d_head, d_vocab] tensor
    small = torch.einsum("lhef,fd,lhdg->lheg", model.W_O, unembed_embed, model.W_V)
    eig = torch.linalg.eigvals(small.double())  # [layer, head, d_head], complex
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-30)).float().cpu()
