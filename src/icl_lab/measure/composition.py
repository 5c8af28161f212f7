"""Weight-level circuits: QK and OV matrices and the composition scores between heads, after
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits", and the K-composition
eigen-trace that Olsson et al. (2022) use as a weight-based prefix-matching signal.

With W_QK = W_Q W_K^T and W_OV = W_V W_O (both [d_model, d_model], inputs on the left), an earlier
head A composes with a later head B through B's query (W_OV^A W_QK^B), key (W_OV^A (W_QK^B)^T)
or value (W_OV^A W_OV^B). The composition score is ||W_A W_B||_F / (||W_A||_F ||W_B||_F).
Raw scores mean little on their own, so each comes with the mean and standard deviation of the
same score for random Gaussian matrices of the same shapes. Every circuit stays factored
(`Factored`, d_head-thin), so GPT-2-sized models are scored without a d_model x d_model matrix per
head or per pair of heads."""

from __future__ import annotations

from typing import Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icl_lab.measure.factored import Factored, ov_circuit, qk_circuit
from icl_lab.model.transformer import Transformer

Mode = Literal["q", "k", "v"]
BASELINE_SAMPLES = 200  # random circuits behind each composition baseline


def qk_ov(model: Transformer) -> tuple[Float[Tensor, "layer head d_model d_model"], Float[Tensor, "layer head d_model d_model"]]:
    """W_QK = W_Q W_K^T and W_OV = W_V W_O of every head, formed in full: for small models and
    tests only (GPT-2 small would need 2 x 340 MB); the scores here use the factored forms."""
    return qk_circuit(model).full(), ov_circuit(model).full()


def _circuits(model: Transformer, layer: int, mode: Mode) -> tuple[Factored, Factored]:
    """One layer's W_OV (A's side) and W_QK, W_QK^T or W_OV (B's side, by mode) as factors,
    [head, d_model, d_model], read from that block alone: no stacked copy of every layer's weights.
    At least float32, since QR and the products below lose too much in half precision."""
    attn = model.blocks[layer].attn
    W = {n: getattr(attn, n).detach() for n in ("W_Q", "W_K", "W_V", "W_O")}
    W = {n: w.to(torch.promote_types(w.dtype, torch.float32)) for n, w in W.items()}
    ov = Factored(W["W_V"], W["W_O"])
    right = {"q": Factored(W["W_Q"], W["W_K"].transpose(-1, -2)),
             "k": Factored(W["W_K"], W["W_Q"].transpose(-1, -2)), "v": ov}[mode]
    return ov, right


@torch.inference_mode()
def composition_scores(model: Transformer, mode: Mode) -> Float[Tensor, "layer_a head_a layer_b head_b"]:
    """Composition score of every head pair (earlier A into later B) through B's query, key or
    value (Elhage et al. 2021); NaN where A is not in an earlier layer than B.

    With A = W_OV^A = U_1 V_1 and B = U_2 V_2 (thin factors, [d_model, d_head] @ [d_head, d_model]),
    A B = U_1 (V_1 U_2) V_2, and with U_1 = Q_1 R_1 and V_2^T = Q_2 R_2 (QR, orthonormal Q),
    ||A B||_F = ||R_1 (V_1 U_2) R_2^T||_F: a d_head x d_head matrix per pair, and a sum of squares
    (no cancellation, unlike the Gram form trace(U_1^T U_1 M V_2 V_2^T M^T)). The only
    d_model-sized work is V_1 U_2 for one pair of layers at a time, so the extra memory is
    O(d_model^2) and the time O(n_layers^2 d_model^3): ~0.5 s for GPT-2 small on 2 CPU cores.

    Args:
        model: the model whose weights are scored.
        mode: "q", "k" or "v": which input of the later head B is read.

    Returns:
        [layer_a, head_a, layer_b, head_b] scores in [0, 1], NaN unless layer_a < layer_b.

    Example:
        >>> composition_scores(model, "k")[0, 0, 1, 0]   # previous-token head into induction head
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layers = [_circuits(model, l, mode) for l in range(L)]  # factors only: views of the weights
    r1 = [torch.linalg.qr(left.A, mode="r").R for left, _ in layers]  # [head, d_head, d_head] per layer
    r2 = [torch.linalg.qr(right.B.transpose(-1, -2), mode="r").R for _, right in layers]
    norm_a = [left.norm() for left, _ in layers]  # [head] per layer
    norm_b = [right.norm() for _, right in layers]
    ref = layers[0][0].A
    out = torch.full((L, H, L, H), float("nan"), dtype=ref.dtype, device=ref.device)
    for la in range(L - 1):
        v1 = einops.rearrange(layers[la][0].B, "h e d -> (h e) d")
        for lb in range(la + 1, L):
            u2 = einops.rearrange(layers[lb][1].A, "h d e -> d (h e)")
            # V_1 U_2 of every head pair as one [d_model]-deep product
            mid = einops.rearrange(v1 @ u2, "(ha i) (hb j) -> ha hb i j", ha=H, hb=H)
            prod = r1[la][:, None] @ mid @ r2[lb].transpose(-1, -2)[None]  # [head_a, head_b, d_head, d_head]
            out[la, :, lb] = prod.flatten(-2).norm(dim=-1) / (norm_a[la][:, None] * norm_b[lb][None, :])
    return out


@torch.inference_mode()
def composition_baseline(model: Transformer, mode: Mode, samples: int = BASELINE_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the composition score for random Gaussian W_Q, W_K, W_V, W_O of this
    model's shapes (the score is scale-free, so the Gaussian's scale does not matter)."""
    d, e = model.cfg.d_model, model.cfg.d_head
    gen = torch.Generator().manual_seed(seed)
    g = lambda *shape: torch.randn(samples, *shape, generator=gen)  # noqa: E731
    ov_a = Factored(g(d, e), g(e, d))
    right = Factored(g(d, e), g(e, d))  # a random QK^T, QK or OV has the same distribution
    if mode == "q":
        right = Factored(right.B.transpose(-1, -2), right.A.transpose(-1, -2))
    # ||A B||_F from d_head-sized factors, as in `composition_scores`: no [samples, d_model, d_model] product
    r1 = torch.linalg.qr(ov_a.A, mode="r").R
    r2 = torch.linalg.qr(right.B.transpose(-1, -2), mode="r").R
    prod = (r1 @ (ov_a.B @ right.A) @ r2.transpose(-1, -2)).flatten(-2).norm(dim=-1)
    s = prod / (ov_a.norm() * right.norm())
    return float(s.mean()), float(s.std())


@torch.inference_mode()
def k_composition_eigen_trace(model: Transformer, prev_token: Float[Tensor, "layer head"]) -> Float[Tensor, "layer head"]:
    """For every head h, the weight-based prefix-matching signal of Olsson et al.: the trace of
    the token-to-token matrix W_E W_QK^h (W_E W_OV^p)^T, which is large and positive when a query
    token matches keys whose *previous* token (moved there by an earlier head p) is the same token,
    summed over earlier heads p weighted by their previous-token scores, and divided by the sum of
    the absolute eigenvalues so that it lies in [-1, 1] (1: pure matching). Layer-0 heads get 0.

    The matrix is W_E Q_h K_h^T S W_E^T with S = sum_p w_p (W_OV^p)^T [d_model, d_model], so its
    non-zero eigenvalues are those of the d_head x d_head K_h^T S (W_E^T W_E) Q_h.

    Args:
        model: the model whose weights are read.
        prev_token: [layer, head] weight of every head as a previous-token head.

    Returns:
        [layer, head] eigenvalue trace ratio in [-1, 1]; 0 in layer 0.
    """
    L, H, d, e = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head
    circuits = [_circuits(model, l, "q") for l in range(L)]  # (W_OV, W_QK) of every layer, as factors
    W_E = model.W_E.detach().to(circuits[0][0].A)
    w = prev_token.to(W_E)
    gram = W_E.T @ W_E  # [d_model, d_model]: the token-to-token trace sees W_E only through it
    S = torch.zeros(d, d, dtype=W_E.dtype, device=W_E.device)  # sum over earlier heads of w W_OV^T
    out = torch.zeros(L, H, dtype=W_E.dtype, device=W_E.device)
    for l in range(1, L):
        ov, qk = circuits[l - 1][0], circuits[l][1]  # W_V W_O of layer l-1; W_Q W_K^T of layer l
        # W_OV^T = W_O^T W_V^T, summed over layer l-1's heads as one [d, H e] @ [H e, d] product
        o_t = einops.rearrange(w[l - 1][:, None, None] * ov.B, "h e d -> d (h e)")  # weighted W_O^T
        S += o_t @ einops.rearrange(ov.A, "h d e -> (h e) d")
        t = S @ (gram @ einops.rearrange(qk.A, "h d e -> d (h e)"))  # [d_model, head*d_head]: S G Q_h
        small = torch.einsum("hid,dhj->hij", qk.B, t.view(d, H, e))  # [head, d_head, d_head]: K_h^T S G Q_h
        eig = torch.linalg.eigvals(small.double())  # [head, d_head]
        out[l] = (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-30)).to(out)
    return out.float()
