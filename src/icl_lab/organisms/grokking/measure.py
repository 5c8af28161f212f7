"""Nanda et al.'s progress measures for grokking modular addition ("Progress measures for grokking
via mechanistic interpretability", 2023, Section 5.1), each a pure function of a model or a tensor.

A grokked model computes (a + b) mod p by rotating through a few *key frequencies* w_k = 2πk/p: its
embedding is sparse in the Fourier basis over the numbers 0..p-1, and its logits are close to
Σ_k α_k cos(w_k(a + b - c)). The measures track that circuit through training: the embedding's
norm in each frequency and the Gini coefficient of those norms (sparsity), the *restricted loss*
(only the key frequencies' part of the logits kept: how well the circuit alone does), the
*excluded loss* (that part removed, on the training data: how much the model still memorises), and
the total sum of squared weights (what weight decay pushes down). The logits are read at the `=`
position of `a b =` for all p² pairs, over the p answers (the `=` logit, never a target, is left
out, as Nanda's unembedding has no column for it), in float64."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from icl_lab.organisms.grokking.task import ModularTask, component_names, sequences  # noqa: F401  (component_names: re-exported)
from icl_lab.errors import ConfigError
from icl_lab.model.transformer import Transformer

KEY_SHARE = 2.0  # a key frequency holds at least this many times the uniform share of the embedding's norm²


def fourier_basis(p: int) -> Float[Tensor, "component p"]:
    """The orthonormal real Fourier basis over the numbers 0..p-1 (p odd), one row per component:
    row 0 is the constant, rows 2k-1 and 2k are cos(w_k x) and sin(w_k x), w_k = 2πk/p, k = 1..(p-1)/2.

    Raises:
        ConfigError: p is even.

    Example:
        >>> B = fourier_basis(113)      # [113, 113]; B @ B.T is the identity
    """
    if p % 2 == 0:
        raise ConfigError(f"the Fourier basis needs an odd p, got {p}; use a prime modulus such as 113")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def frequency_norms(W: Float[Tensor, "p d"]) -> Float[Tensor, " freq"]:
    """The norm of `W` (rows indexed by the numbers 0..p-1) in each frequency k = 1..(p-1)/2: the
    norm of its projection on the cos and sin components of that frequency (the constant is left out).

    Example:
        >>> frequency_norms(model.W_E[:113])   # [56]: the embedding's norm per frequency
    """
    coef = fourier_basis(W.shape[0]).to(W.device) @ W.double()  # [component, d]
    return coef[1:].pow(2).sum(-1).view(-1, 2).sum(-1).sqrt()


def embedding_frequency_norms(model: Transformer, p: int) -> Float[Tensor, " freq"]:
    """The embedding's norm in each frequency (Nanda et al., Figure 3): `frequency_norms(W_E[:p])`."""
    return frequency_norms(model.W_E.detach()[:p])


def logit_map_frequency_norms(model: Transformer, p: int) -> Float[Tensor, " freq"]:
    """The norm of W_L = W_out W_U (neurons -> the p answer logits) in each frequency of the answer c."""
    W_L = model.blocks[-1].mlp.W_out.detach() @ model.W_U.detach()[:, :p]  # [d_mlp, p]
    return frequency_norms(W_L.T)


def key_frequencies(norms: Float[Tensor, " freq"], share: float = KEY_SHARE) -> list[int]:
    """The frequencies k (1-based) that hold at least `share` times the uniform share 1/n_freq of
    the total squared norm, strongest first; none for an embedding without Fourier structure
    (a random one holds about the uniform share in every frequency).

    Example:
        >>> key_frequencies(embedding_frequency_norms(model, 113))   # e.g. [14, 35, 41, 42, 52]
    """
    sq = norms.double().pow(2)
    shares = sq / sq.sum().clamp(min=1e-300)
    keep = (shares >= share / len(norms)).nonzero().flatten()
    return [int(k) + 1 for k in keep[shares[keep].argsort(descending=True)]]


def gini(values: Float[Tensor, " n"]) -> float:
    """The Gini coefficient of non-negative values: 0 when all are equal, (n - 1)/n when one holds
    everything. Nanda et al. track it for the Fourier norms of W_E and W_L as a measure of sparsity."""
    x = values.double().sort().values
    n, total = len(x), float(x.sum())
    if total <= 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(2 * (ranks * x).sum() / (n * total) - (n + 1) / n)


def sum_squared_weights(model: Transformer) -> float:
    """The total sum of squared parameters, all of them (what weight decay pulls down)."""
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))


@torch.inference_mode()
def all_logits(model: Transformer, p: int) -> Float[Tensor, "a b c"]:
    """The logits of the p answers at the `=` position for every input `a b =`, in float64.

    Example:
        >>> L = all_logits(model, 113)    # [113, 113, 113]; L[a, b].argmax() should be (a + b) % 113
    """
    pairs = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"), dim=-1).reshape(-1, 2)
    tokens = sequences(pairs, p)[:, :3].to(model.W_E.device)
    return model(tokens)[:, 2, :p].double().reshape(p, p, p)


def sum_directions(p: int, freqs: list[int]) -> Float[Tensor, "direction a b"]:
    """Unit vectors over the p² inputs along cos(w_k(a + b)) and sin(w_k(a + b)) for each frequency
    k in `freqs` (orthonormal: each has squared norm p²/2 before normalising, and frequencies differ)."""
    s = (torch.arange(p)[:, None] + torch.arange(p)[None, :]).double()  # [a, b]
    dirs = [f(2 * math.pi * k * s / p) for k in freqs for f in (torch.cos, torch.sin)]
    if not dirs:
        return torch.zeros((0, p, p), dtype=torch.float64)
    return torch.stack(dirs) / (p / math.sqrt(2))


def key_frequency_part(logits: Float[Tensor, "a b c"], freqs: list[int]) -> Float[Tensor, "a b c"]:
    """The part of the logits, as a function of the inputs (a, b) for each answer c, that lies in the
    span of cos(w_k(a + b)) and sin(w_k(a + b)) over the key frequencies: it holds every term
    cos(w_k(a + b - c)) exactly."""
    dirs = sum_directions(logits.shape[0], freqs).to(logits)
    coef = torch.einsum("kab,abc->kc", dirs, logits)
    return torch.einsum("kab,kc->abc", dirs, coef)


def restricted_logits(logits: Float[Tensor, "a b c"], freqs: list[int]) -> Float[Tensor, "a b c"]:
    """Only the key frequencies' part kept, plus each answer's mean logit over the inputs (Nanda
    et al.'s bias correction: the constant a projection would drop)."""
    return key_frequency_part(logits, freqs) + logits.mean(dim=(0, 1), keepdim=True)


def excluded_logits(logits: Float[Tensor, "a b c"], freqs: list[int]) -> Float[Tensor, "a b c"]:
    """The key frequencies' part removed; everything else (memorisation) kept."""
    return logits - key_frequency_part(logits, freqs)


def answer_loss(logits: Float[Tensor, "a b c"], where: Bool[Tensor, "a b"] | None = None) -> float:
    """Mean cross-entropy (nats, float64) of the right answers (a + b) mod p over the inputs `where`
    (all when None)."""
    p = logits.shape[0]
    answers = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p
    losses = F.cross_entropy(logits.reshape(-1, p).double(), answers.flatten().to(logits.device), reduction="none")
    return float(losses.mean() if where is None else losses[where.flatten().to(losses.device)].mean())


def answer_accuracy(logits: Float[Tensor, "a b c"], where: Bool[Tensor, "a b"] | None = None) -> float:
    """Share of the inputs `where` (all when None) whose top logit is (a + b) mod p."""
    p = logits.shape[0]
    answers = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p
    right = (logits.argmax(-1).cpu() == answers).flatten().double()
    return float(right.mean() if where is None else right[where.flatten().cpu()].mean())


def restricted_loss(model: Transformer, task: ModularTask, freqs: list[int]) -> float:
    """The loss on all p² inputs with only the key frequencies' part of the logits kept
    (Nanda et al., Section 5.1): how well the Fourier circuit alone does.

    Example:
        >>> restricted_loss(model, build_split(run.config.data.modular), [14, 35, 41, 42, 52])
    """
    return answer_loss(restricted_logits(all_logits(model, task.p), freqs))


def excluded_loss(model: Transformer, task: ModularTask, freqs: list[int]) -> float:
    """The loss on the training inputs with the key frequencies' part of the logits removed
    (Nanda et al., Section 5.1): how much of the training set is still fitted by memorisation."""
    return answer_loss(excluded_logits(all_logits(model, task.p), freqs), task.is_train.view(task.p, task.p))


def progress_measures(model: Transformer, task: ModularTask, freqs: list[int]) -> dict[str, float]:
    """Every scalar progress measure of one checkpoint.

    Args:
        model: the checkpoint's model.
        task: the run's split (`icl_lab.organisms.grokking.task.build_split`).
        freqs: the key frequencies the restricted and excluded losses use (the final model's,
            so every checkpoint is measured against the same circuit, as in the paper).

    Returns:
        `train_loss`, `test_loss`, `train_accuracy`, `test_accuracy`, `restricted_loss` (all p²
        inputs), `excluded_loss` (training inputs), `restricted_accuracy`, `gini_embed`,
        `gini_logit_map`, `sum_squared_weights`, `n_key_freqs` (this checkpoint's own key
        frequencies by `key_frequencies`).
    """
    p = task.p
    train = task.is_train.view(p, p)
    logits = all_logits(model, p)
    restricted = restricted_logits(logits, freqs)
    embed = embedding_frequency_norms(model, p)
    return {
        "train_loss": answer_loss(logits, train), "test_loss": answer_loss(logits, ~train),
        "train_accuracy": answer_accuracy(logits, train), "test_accuracy": answer_accuracy(logits, ~train),
        "restricted_loss": answer_loss(restricted), "restricted_accuracy": answer_accuracy(restricted),
        "excluded_loss": answer_loss(excluded_logits(logits, freqs), train),
        "gini_embed": gini(embed), "gini_logit_map": gini(logit_map_frequency_norms(model, p)),
        "sum_squared_weights": sum_squared_weights(model), "n_key_freqs": float(len(key_frequencies(embed))),
    }


