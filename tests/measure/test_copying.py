"""The copying scores on hand-built heads with known answers, on random heads, and across
vocabulary sizes (the primary score must not depend on how many tokens compete)."""

import pytest
import torch

from icl_lab.measure import repeated_random_tokens
from icl_lab.measure.copying import competitor_set, copying_direct_scores, copying_olsson_scores, copying_scores, rank_shares
from icl_lab.model import ModelConfig, Transformer
from tests.conftest import hand_built_ov, tiny_config


def _repeated(model, n_examples=32, seed=0):
    return repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, seg_len=min(25, model.cfg.d_vocab - 1),
                                  n_repeats=1, n_examples=n_examples, seed=seed)[0]


@pytest.mark.parametrize("sign", [+1.0, -1.0])
def test_identity_ov_reads_plus_one_and_its_negation_minus_one(sign):
    model = hand_built_ov(sign, d_vocab=10)
    tokens = repeated_random_tokens(10, 8, seg_len=7, n_repeats=1, n_examples=8)[0]
    assert copying_scores(model, tokens).item() == pytest.approx(sign, abs=1e-6)
    assert copying_direct_scores(model).item() == pytest.approx(sign, abs=1e-6)


def prev_token_copier(sign: float, d_vocab: int = 40, n_ctx: int = 27, scale: float = 200.0) -> Transformer:
    """1-layer model whose head attends to the previous token and writes it (sign=+1) or its
    negation (sign=-1) into the logits: residual = [token one-hot | position one-hot]."""
    V, P = d_vocab, n_ctx
    cfg = ModelConfig(n_layers=1, d_model=V + P, n_heads=1, d_head=max(V, P), d_vocab=V, n_ctx=P,
                      positional="learned", normalization="none", bias=False)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, :V] = torch.eye(V)
        model.W_pos[:, V:] = torch.eye(P)
        a = model.blocks[0].attn
        a.W_Q[0, V:, :P] = torch.eye(P) * scale
        a.W_K[0, V:, :P] = torch.diag(torch.ones(P - 1), diagonal=1)
        a.W_V[0, :V, :V] = torch.eye(V)
        a.W_O[0, :V, :V] = sign * torch.eye(V)
        model.W_U[:V] = torch.eye(V)
    return model.eval()


@pytest.mark.parametrize("sign", [+1.0, -1.0])
def test_olsson_recipe_on_a_previous_token_copier(sign):
    model = prev_token_copier(sign)
    tokens = repeated_random_tokens(40, 27, seg_len=25, n_repeats=1, n_examples=6)[0]  # [BOS] + 25 tokens
    assert copying_olsson_scores(model, tokens).item() == pytest.approx(sign, abs=1e-5)


def test_random_heads_read_about_zero():
    cfg = tiny_config(n_layers=2, d_model=80, n_heads=5, d_vocab=512, n_ctx=64, normalization="layernorm")
    scores = torch.cat([copying_scores(Transformer(cfg, seed=s), _repeated(Transformer(cfg))).flatten() for s in range(5)])
    assert len(scores) == 50
    assert abs(scores.mean().item()) < 0.05
    direct = torch.cat([copying_direct_scores(Transformer(cfg, seed=s)).flatten() for s in range(5)])
    assert abs(direct.mean().item()) < 0.05
    # the paper's recipe does not centre on 0 for random heads (the module docstring says so)
    olsson = copying_olsson_scores(Transformer(cfg, seed=0), _repeated(Transformer(cfg)))
    assert (olsson < -0.5).all()


def planted_copier(d_vocab: int, noise: float, d_model: int = 64) -> Transformer:
    """A 1-layer model with random tied embeddings whose one head's OV is the identity plus an
    antisymmetric noise (which blurs the competitors' logits but leaves each token's own logit
    |e_t|^2, so the token-to-token spread of the score stays small at any vocabulary)."""
    cfg = ModelConfig(n_layers=1, d_model=d_model, n_heads=1, d_head=d_model, d_vocab=d_vocab, n_ctx=64,
                      normalization="none", bias=False)
    model = Transformer(cfg, seed=3)
    g = torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(11))  # the same head at every vocabulary
    ov_noise = (g - g.T) / 2
    with torch.no_grad():
        model.W_pos.zero_()
        model.W_E.copy_(torch.randn(d_vocab, d_model, generator=torch.Generator().manual_seed(12)))
        model.W_U.copy_(model.W_E.T)
        a = model.blocks[0].attn
        a.W_V[0] = torch.eye(d_model) + noise * ov_noise
        a.W_O[0] = torch.eye(d_model)
    return model.eval()


def test_the_same_planted_copier_reads_the_same_at_vocabularies_128_and_8192():
    small, large = planted_copier(128, noise=1.5), planted_copier(8192, noise=1.5)
    a = copying_scores(small, _repeated(small)).item()
    b = copying_scores(large, _repeated(large)).item()
    assert 0.3 < a < 0.95  # a noisy copier, not a saturated one: the comparison means something
    assert abs(a - b) <= 0.05


def test_rank_share_counts_ties_as_half_and_never_compares_a_token_with_itself():
    model = hand_built_ov(+1.0, d_vocab=6)
    written = torch.zeros(1, 2, 6)  # writes nothing: every competitor ties
    q = rank_shares(model, written, torch.tensor([0, 3]), competitor_set(6))
    assert torch.allclose(q, torch.full((1, 2), 0.5))
    written[0, 0, 0] = 1.0  # raises token 0 alone: beats all 5 others
    q = rank_shares(model, written, torch.tensor([0, 3]), competitor_set(6))
    assert q[0, 0] == 1.0 and q[0, 1] == 0.5  # source 1 still writes nothing


def test_competitor_set_is_fixed_and_capped():
    assert torch.equal(competitor_set(100), torch.arange(100))
    c = competitor_set(50_000, 4096)
    assert len(c) == 4096 and torch.equal(c, competitor_set(50_000, 4096)) and (c.diff() > 0).all()


def test_per_example_scores_average_to_the_score():
    model = Transformer(tiny_config(d_vocab=64, n_ctx=40), seed=2)
    tokens = _repeated(model, n_examples=6)
    per = copying_scores(model, tokens, per_example=True)
    assert per.shape == (6, 2, 2)
    assert torch.allclose(per.mean(0), copying_scores(model, tokens), atol=1e-6)
