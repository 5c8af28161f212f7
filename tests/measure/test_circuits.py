import pytest
import torch

from icl_lab.measure import copying_scores, duplicate_token_scores, ov_eigen_positivity, repeated_random_tokens
from icl_lab.model import Transformer
from tests.conftest import hand_built_duplicate_head, hand_built_ov, tiny_config


def test_identity_ov_copies():
    model = hand_built_ov(+1.0)
    assert copying_scores(model).item() == pytest.approx(1.0, abs=1e-6)
    assert ov_eigen_positivity(model).item() == pytest.approx(1.0, abs=1e-6)


def test_negated_ov_anti_copies():
    model = hand_built_ov(-1.0)
    assert copying_scores(model).item() == pytest.approx(-1.0, abs=1e-6)
    assert ov_eigen_positivity(model).item() == pytest.approx(-1.0, abs=1e-6)


def test_copying_is_chunk_invariant_and_matches_the_full_matrix():
    model = Transformer(tiny_config(), seed=4)
    assert torch.allclose(copying_scores(model, budget=2 * 50 * 7), copying_scores(model), atol=1e-6)  # 7 rows a time
    # the full [d_vocab, d_vocab] computation, written out for one head
    a = model.blocks[1].attn
    logits = (model.W_E @ a.W_V[1] @ a.W_O[1] @ model.W_U).detach()
    raised = (logits - logits.mean(-1, keepdim=True)).relu()
    share = (raised.diagonal() / raised.sum(-1)).mean()
    assert copying_scores(model)[1, 1].item() == pytest.approx(float((4 * share - 1).clamp(-1, 1)), abs=1e-5)


def test_large_vocabularies_sample_source_tokens():
    model = Transformer(tiny_config(d_vocab=400), seed=6)
    full, sampled = copying_scores(model), copying_scores(model, max_sources=200)
    assert not torch.equal(full, sampled) and (full - sampled).abs().max() < 0.1  # an estimate of the same mean
    assert torch.equal(sampled, copying_scores(model, max_sources=200))  # a fixed sample


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
    assert (copying_scores(Transformer(tiny_config(), seed=1)) < -0.5).all()  # share ~ 2/d_vocab


def test_hand_built_duplicate_token_head_scores_one():
    model = hand_built_duplicate_head()
    toks, seg = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=5)
    assert duplicate_token_scores(model, toks, seg_len=seg).item() >= 0.99
