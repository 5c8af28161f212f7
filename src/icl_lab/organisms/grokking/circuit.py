"""The grokked model taken apart, after Nanda et al. (2023), Section 4: its attention and MLP
neurons as functions of the inputs (a, b), their 2-D Fourier spectra, how much of each neuron's
variance one frequency explains (neurons cluster by frequency), and how well sums of
cos(w_k(a + b - c)) over the key frequencies reproduce the logits. Pure functions of a model or a
tensor; `icl_lab.organisms.grokking.measure` holds the per-checkpoint progress measures."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from icl_lab.organisms.grokking.task import sequences
from icl_lab.organisms.grokking.measure import all_logits, answer_loss, fourier_basis
from icl_lab.model.transformer import Transformer


@torch.inference_mode()
def input_activations(model: Transformer, p: int, layer: int = 0) -> tuple[Float[Tensor, "head key_pos a b"], Float[Tensor, "neuron a b"]]:
    """The attention the `=` position pays to `a`, `b` and `=`, and the MLP neurons' activations
    (after the non-linearity) at `=`, for every input `a b =`.

    Returns:
        (pattern [head, key_pos (a, b, =), a, b], neurons [d_mlp, a, b]).
    """
    pairs = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), dim=-1).reshape(-1, 2)
    tokens = sequences(pairs, p)[:, :3].to(model.W_E.device)
    pattern_name, post_name = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in (pattern_name, post_name))
    pattern = cache[pattern_name][:, :, 2, :].float()  # [batch, head, key_pos]
    neurons = cache[post_name][:, 2, :].float()  # [batch, d_mlp]
    return pattern.permute(1, 2, 0).reshape(-1, 3, p, p).cpu(), neurons.T.reshape(-1, p, p).cpu()


def fourier_2d(x: Float[Tensor, "*batch a b"]) -> Float[Tensor, "*batch a b"]:
    """Coefficients of functions of (a, b) in the product Fourier basis: out[..., i, j] is the
    coefficient of component i of a times component j of b (`component_names` labels them)."""
    basis = fourier_basis(x.shape[-1]).to(x.device)
    return torch.einsum("ia,...ab,jb->...ij", basis, x.double(), basis)


def fourier_spectrum(x: Float[Tensor, "n a b"]) -> Float[Tensor, "a b"]:
    """The share of the (non-constant) squared norm of `n` functions of (a, b), e.g. every
    neuron's activations, in each 2-D Fourier component, summed over the n functions."""
    sq = fourier_2d(x).pow(2)
    sq[..., 0, 0] = 0  # the mean carries no information about (a, b)
    total = sq.sum().clamp(min=1e-300)
    return sq.sum(0) / total


def frequency_shares(x: Float[Tensor, "n a b"]) -> Float[Tensor, "n freq"]:
    """Per function (e.g. per neuron) and frequency k: the share of its variance over (a, b) in the
    components that involve only frequency k (cos/sin of w_k a, of w_k b, and their products),
    Nanda et al.'s "fraction of variance explained" by a frequency."""
    sq = fourier_2d(x).pow(2)  # [n, component, component]
    sq[..., 0, 0] = 0
    total = sq.sum((-1, -2)).clamp(min=1e-300)
    n_freq = (x.shape[-1] - 1) // 2
    shares = []
    for k in range(1, n_freq + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        shares.append(sq[:, idx][:, :, idx].sum((-1, -2)) / total)
    return torch.stack(shares, dim=1)


def neuron_clusters(shares: Float[Tensor, "neuron freq"], threshold: float = 0.5) -> dict[int, int]:
    """How many neurons have each frequency k as the one that explains at least `threshold` of
    their variance (dead neurons, with no variance, count for none)."""
    best, share = shares.argmax(dim=1), shares.max(dim=1).values
    out: dict[int, int] = {}
    for k in (best[share >= threshold] + 1).tolist():
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def cosine_directions(p: int, freqs: list[int]) -> Float[Tensor, "freq a b c"]:
    """cos(w_k(a + b - c)) over every (a, b, c), one slice per key frequency."""
    r = torch.arange(p, dtype=torch.float64)
    s = r[:, None, None] + r[None, :, None] - r[None, None, :]
    return torch.stack([torch.cos(2 * math.pi * k * s / p) for k in freqs]) if freqs else torch.zeros((0, p, p, p), dtype=torch.float64)


def cosine_fit(logits: Float[Tensor, "a b c"], freqs: list[int]) -> dict:
    """Fit the logits by Σ_k α_k cos(w_k(a + b - c)) over the key frequencies (least squares; the
    terms are orthogonal, each with squared norm p³/2). Logits are centred over the answers first,
    since a constant per input changes no prediction.

    Returns:
        `{alpha: {k: α_k}, explained: share of the centred logits' variance the fit explains,
        loss: the fit's loss on all p² inputs, loss_model: the model's own loss there}`.
    """
    p = logits.shape[0]
    centred = logits.double() - logits.double().mean(-1, keepdim=True)
    dirs = cosine_directions(p, freqs).to(centred.device)
    alpha = torch.einsum("kabc,abc->k", dirs, centred) / (p**3 / 2)
    fit = torch.einsum("k,kabc->abc", alpha, dirs)
    explained = 1 - float((centred - fit).pow(2).sum() / centred.pow(2).sum().clamp(min=1e-300))
    return {"alpha": {int(k): float(a) for k, a in zip(freqs, alpha)}, "explained": explained,
            "loss": answer_loss(fit), "loss_model": answer_loss(logits)}


def analyze_circuit(model: Transformer, p: int, freqs: list[int]) -> dict:
    """The final model's circuit, summarised for JSON and the report.

    Returns:
        `{attention_to_a: [head][a][b] (rounded), attention_mean: [head][key_pos],
        neuron_examples: {neuron: [a][b]} (the most active neuron of each key frequency),
        neuron_spectrum: [component][component] (share of the neurons' variance),
        neuron_best_freq: [neuron], neuron_best_share: [neuron], neuron_clusters: {k: count},
        neurons_explained: share of neurons whose best frequency explains >= 50% of their
        variance, logit_fit: `cosine_fit`}`.
    """
    pattern, neurons = input_activations(model, p)
    shares = frequency_shares(neurons)
    best, best_share = shares.argmax(1) + 1, shares.max(1).values
    alive = neurons.flatten(1).var(1) > 0
    examples = {}
    for k in freqs:
        mine = ((best == k) & alive).nonzero().flatten()
        if len(mine):
            top = int(mine[neurons[mine].flatten(1).var(1).argmax()])
            examples[top] = neurons[top].round(decimals=3).tolist()
    return {
        "attention_to_a": pattern[:, 0].round(decimals=3).tolist(),
        "attention_mean": pattern.mean((-1, -2)).tolist(),
        "neuron_examples": examples,
        "neuron_spectrum": fourier_spectrum(neurons).float().tolist(),
        "neuron_best_freq": best.tolist(), "neuron_best_share": best_share.float().tolist(),
        "neuron_clusters": neuron_clusters(shares),
        "neurons_explained": float((best_share[alive] >= 0.5).double().mean()) if alive.any() else 0.0,
        "logit_fit": cosine_fit(all_logits(model, p), freqs),
    }
