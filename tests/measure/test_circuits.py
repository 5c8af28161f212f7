import pytest
import torch

from icl_lab.measure import duplicate_token_scores, ov_eigen_positivity, repeated_random_tokens
from icl_lab.model import Transformer
from tests.conftest import hand_built_duplicate_head, hand_built_ov, tiny_config


def test_identity_ov_copies():
    model = hand_built_ov(+1.0)
    assert ov_eigen_positivity(model).item() == pytest.approx(1.0, abs=1e-6)


def test_negated_ov_anti_copies():
    model = hand_built_ov(-1.0)
    assert ov_eigen_positivity(model).item() == pytest.approx(-1.0, abs=1e-6)


def test_eigen_positivity_matches_the_full_matrix_spectrum():
    model = Transformer(tiny_config(d_vocab=20), seed=5)
    a = model.blocks[0].attn
    full = (model.W_E @ a.W_V[0] @ a.W_O[0] @ model.W_U).detach().double()
    eig = torch.linalg.eigvals(full)
    expected = eig.sum().real / eig.abs().sum()
    assert ov_eigen_positivity(model)[0, 0].item() == pytest.approx(float(expected), abs=1e-4)


def test_random_heads_score_near_the_random_baseline():
    scores = torch.stack([ov_eigen_positivity(Transformer(tiny_config(d_model=64, n_heads=4), seed=s)) for s in range(3)])
    assert scores.abs().mean() < 0.25  # no systematic sign for random weights


def test_hand_built_duplicate_token_head_scores_one():
    model = hand_built_duplicate_head()
    toks, seg = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=5)
    assert duplicate_token_scores(model, toks, seg_len=seg).item() >= 0.99
