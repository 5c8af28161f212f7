"""OV eigenvalue positivity, the weight-based copying check of Olsson et al. (2022), "In-context
Learning and Induction Heads", Model Analysis Table, and Elhage et al. (2021), "A Mathematical
Framework for Transformer Circuits". (The copying scores live in `icl_lab.measure.copying`.)

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
def ov_eigen_positivity(model: Transformer) -> Float[Tensor, "layer head"]:
    """OV eigenvalue positivity sum(lambda) / sum(|lambda|) of W_E W_V W_O W_U for every head
    (Elhage et al. 2021): 1 when the circuit copies (all eigenvalues positive), -1 when it
    anti-copies. Computed from the [d_head, d_head] product W_O W_U W_E W_V, which has the same
    non-zero eigenvalues."""
    unembed_embed = model.W_U @ model.W_E  # [d_model, d_model] first: never a [layer, head, d_head, d_vocab] tensor
    small = torch.einsum("lhef,fd,lhdg->lheg", model.W_O, unembed_embed, model.W_V)
    eig = torch.linalg.eigvals(small.double())  # [layer, head, d_head], complex
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-30)).float().cpu()
