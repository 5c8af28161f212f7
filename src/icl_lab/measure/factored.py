"""`Factored`: a matrix kept as the product A @ B of thin factors, such as a head's
W_QK = W_Q W_K^T or W_OV = W_V W_O ([d_model, d_head] @ [d_head, d_model]), or its full circuit
through the embeddings ([d_vocab, d_head] @ [d_head, d_vocab]). Its eigenvalues, singular values and
norm come from d_head-sized computations, never from the full product (Elhage et al. 2021)."""

from __future__ import annotations

from icl_lab.model.factored import Factored
from icl_lab.model.transformer import Transformer

__all__ = ["Factored", "qk_circuit", "ov_circuit", "full_qk_circuit", "full_ov_circuit"]


def qk_circuit(model: Transformer) -> Factored:
    """W_QK = W_Q W_K^T of every head, [layer, head, d_model, d_model] as factors."""
    return Factored(model.W_Q.detach(), model.W_K.detach().transpose(-1, -2))


def ov_circuit(model: Transformer) -> Factored:
    """W_OV = W_V W_O of every head, [layer, head, d_model, d_model] as factors."""
    return Factored(model.W_V.detach(), model.W_O.detach())


def full_qk_circuit(model: Transformer) -> Factored:
    """Token-to-token attention scores W_E W_QK W_E^T of every head, [layer, head, d_vocab, d_vocab]
    (positional and norm terms left out, as in the paper)."""
    W_E = model.W_E.detach()
    return W_E @ qk_circuit(model) @ W_E.T


def full_ov_circuit(model: Transformer) -> Factored:
    """Source token to logits W_E W_OV W_U of every head, [layer, head, d_vocab, d_vocab]."""
    return model.W_E.detach() @ ov_circuit(model) @ model.W_U.detach()
