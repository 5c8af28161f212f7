"""Nanda et al.'s progress measures on hand-built cases whose answers are known exactly: a planted
Fourier embedding, and a model whose logits are exactly a sum of cos(w_k(a + b - c))."""

import math

import pytest
import torch

from icl_lab.organisms.grokking.task import ModularConfig, build_split
from icl_lab.organisms.grokking.measure import (
    all_logits,
    answer_loss,
    component_names,
    embedding_frequency_norms,
    excluded_logits,
    fourier_basis,
    frequency_norms,
    gini,
    key_frequencies,
    excluded_loss,
    progress_measures,
    restricted_logits,
    restricted_loss,
)
from icl_lab.organisms.grokking.circuit import analyze_circuit, cosine_fit, fourier_2d, frequency_shares, neuron_clusters
from icl_lab.model import ModelConfig, Transformer

P = 31
KEY = [4, 9, 13]


def planted_embedding(p: int, freqs: list[int], d: int = 24, noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """W_E[:p] = Σ_k cos(w_k x) u_k + sin(w_k x) v_k, plus small noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(p, dtype=torch.float64)[:, None]
    W = noise * torch.randn(p, d, generator=g, dtype=torch.float64)
    for k in freqs:
        W += torch.cos(2 * math.pi * k * x / p) * torch.randn(1, d, generator=g, dtype=torch.float64)
        W += torch.sin(2 * math.pi * k * x / p) * torch.randn(1, d, generator=g, dtype=torch.float64)
    return W


def cosine_logits(p: int, alphas: dict[int, float]) -> torch.Tensor:
    r = torch.arange(p, dtype=torch.float64)
    s = r[:, None, None] + r[None, :, None] - r[None, None, :]
    return sum(a * torch.cos(2 * math.pi * k * s / p) for k, a in alphas.items())


class CosineModel(Transformer):
    """A 1-layer model (for its weights) whose logits are replaced by exactly Σ_k α cos(w_k(a + b - c))."""

    def __init__(self, p: int, alpha: float = 3.0) -> None:
        super().__init__(ModelConfig(n_layers=1, d_model=24, n_heads=2, d_mlp=32, d_vocab=p + 1, n_ctx=4, normalization="none",
                                     act_fn="relu", bias=False))
        self.p, self.alpha = p, alpha
        with torch.no_grad():
            self.W_E[:p] = planted_embedding(p, KEY).float()

    def forward(self, tokens):
        a, b = tokens[:, 0, None].double(), tokens[:, 1, None].double()
        c = torch.arange(self.p, dtype=torch.float64)[None, :]
        logits = sum(self.alpha * torch.cos(2 * math.pi * k * (a + b - c) / self.p) for k in KEY)  # [batch, c]
        out = torch.zeros(tokens.shape[0], tokens.shape[1], self.p + 1)
        out[:, :, : self.p] = logits[:, None, :].float()
        out[:, :, self.p] = -1e4  # `=` is never the answer
        return out


def test_the_fourier_basis_is_orthonormal_and_labelled():
    B = fourier_basis(P)
    assert torch.allclose(B @ B.T, torch.eye(P, dtype=torch.float64), atol=1e-12)
    assert component_names(P)[:4] == ["const", "cos 1", "sin 1", "cos 2"] and len(component_names(P)) == P


def test_a_planted_fourier_embedding_gives_its_key_frequencies():
    norms = frequency_norms(planted_embedding(P, KEY))
    assert sorted(key_frequencies(norms)) == KEY
    assert gini(norms) > 0.75  # sparse: 3 of 15 frequencies, so at most 12/15
    random = frequency_norms(torch.randn(P, 512, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert key_frequencies(random) == [] and gini(random) < 0.1


def test_gini_is_zero_for_equal_values_and_maximal_for_one():
    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0] * 9 + [1.0])) == pytest.approx(0.9)


def test_restricted_logits_keep_a_sum_of_cosines_and_excluded_logits_remove_it():
    logits = cosine_logits(P, {4: 2.0, 9: 1.5, 13: 3.0})
    assert torch.allclose(restricted_logits(logits, KEY), logits, atol=1e-10)
    assert torch.allclose(excluded_logits(logits, KEY), torch.zeros_like(logits), atol=1e-10)
    assert answer_loss(excluded_logits(logits, KEY)) == pytest.approx(math.log(P))
    # keeping one key frequency keeps exactly its term
    assert torch.allclose(restricted_logits(logits, [9]), cosine_logits(P, {9: 1.5}), atol=1e-10)


def test_other_terms_are_not_key_frequency_parts():
    r = torch.arange(P, dtype=torch.float64)
    # depends on a alone, at key frequency 4 (it read cos(2 pi 4 r) before: 1 at every integer r, a constant)
    per_input = torch.cos(2 * math.pi * 4 * r / P)[:, None, None] * torch.ones(P, P, P, dtype=torch.float64)
    assert per_input.std() > 0.5  # not a constant
    assert torch.allclose(restricted_logits(per_input, [4]), torch.zeros_like(per_input), atol=1e-10)  # no part along a + b - c
    per_answer = torch.cos(2 * math.pi * 4 * r / P)[None, None, :].expand(P, P, P)  # a bias per answer
    assert torch.allclose(excluded_logits(per_input + per_answer, [4]), per_input + per_answer, atol=1e-10)
    assert torch.allclose(restricted_logits(per_answer, [4]), per_answer, atol=1e-10)  # the answer bias is the mean: kept


def test_progress_measures_on_a_model_whose_logits_are_exactly_a_sum_of_cosines():
    model = CosineModel(P)
    task = build_split(ModularConfig(p=P, frac=0.3))
    m = progress_measures(model, task, KEY)
    assert m["train_accuracy"] == m["test_accuracy"] == m["restricted_accuracy"] == 1.0
    assert m["restricted_loss"] == pytest.approx(answer_loss(all_logits(model, P)), rel=1e-6)  # float32 logits
    weighted = m["train_loss"] * task.n_train + m["test_loss"] * (P * P - task.n_train)
    assert m["restricted_loss"] == pytest.approx(weighted / P**2, rel=1e-5)
    assert m["excluded_loss"] == pytest.approx(math.log(P), rel=1e-6)  # nothing but the circuit: uniform without it
    assert m["n_key_freqs"] == 3 and sorted(key_frequencies(embedding_frequency_norms(model, P))) == KEY
    assert restricted_loss(model, task, KEY) == m["restricted_loss"] and excluded_loss(model, task, KEY) == m["excluded_loss"]
    assert m["sum_squared_weights"] == pytest.approx(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    fit = cosine_fit(all_logits(model, P), KEY)
    assert fit["explained"] == pytest.approx(1.0, abs=1e-6) and fit["alpha"] == pytest.approx({k: 3.0 for k in KEY}, rel=1e-6)


def test_one_frequency_explains_a_neuron_that_reads_only_it():
    r = torch.arange(P, dtype=torch.float64)
    w = 2 * math.pi * 9 / P
    neuron = torch.relu(torch.cos(w * r)[:, None] + torch.cos(w * r)[None, :])  # ReLU(cos w a + cos w b)
    mixed = torch.cos(w * r)[:, None] + torch.cos(2 * math.pi * 4 / P * r)[None, :]
    shares = frequency_shares(torch.stack([neuron, mixed]))
    # the ReLU of a frequency-9 sum leaks into its harmonics (18, 27 = -4 mod 31), but frequency 9 dominates
    assert shares[0].argmax() + 1 == 9 and shares[0, 8] > 0.5
    assert shares[1, 8] == pytest.approx(0.5) and shares[1, 3] == pytest.approx(0.5)
    assert neuron_clusters(shares) == {9: 1, 4: 1} or neuron_clusters(shares) == {9: 1}
    coef = fourier_2d(torch.cos(w * r)[:, None] * torch.ones(P, dtype=torch.float64)[None, :])
    assert coef.pow(2).sum() == pytest.approx(P * P / 2) and coef[17, 0] ** 2 == pytest.approx(P * P / 2)  # cos 9 of a, constant in b


def test_analyze_circuit_reports_every_part_on_a_small_model():
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=24, d_vocab=P + 1, n_ctx=4, normalization="none",
                                    act_fn="relu", bias=False))
    out = analyze_circuit(model, P, KEY)
    assert len(out["attention_to_a"]) == 2 and len(out["attention_to_a"][0]) == P
    assert torch.allclose(torch.tensor(out["attention_mean"]).sum(-1), torch.ones(2), atol=1e-5)
    assert len(out["neuron_best_freq"]) == 24 and len(out["neuron_spectrum"]) == P
    assert set(out["logit_fit"]) == {"alpha", "explained", "loss", "loss_model"}
