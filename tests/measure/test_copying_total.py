"""Copying through the model (decision 26): on a hand-built circuit whose induction head writes
the copied token where only a later head reads it, direct copying reads ~0 and copying_total +1;
on the plain hand-built induction circuit both read +1; random heads read ~0; the null reads ~0
next to a perfect copier; the margin does not saturate where the rank share does."""

import pytest
import torch

from icl_lab.measure import repeated_random_tokens
from icl_lab.measure.copying import copying_scores, copying_statistics
from icl_lab.measure.copying_total import copying_total_statistics
from icl_lab.model import ModelConfig, Transformer
from tests.conftest import hand_built_induction, hand_built_ov, tiny_config


def relayed_induction(d_vocab: int = 12, n_ctx: int = 40, scale: float = 200.0) -> Transformer:
    """3 layers, attention-only, residual = [token V | position P | previous token V | hidden V].
    Layers 0 and 1 are `hand_built_induction`'s, except that the induction head writes the copied
    token into the hidden subspace, which the unembedding does not read; a layer-2 head attends to
    its own position and moves the hidden subspace into the token subspace (x2)."""
    V, P = d_vocab, n_ctx
    d_model, d_head = 3 * V + P, max(V, P)
    cfg = ModelConfig(n_layers=3, d_model=d_model, n_heads=1, d_head=d_head, d_vocab=V, n_ctx=P, d_mlp=0,
                      positional="learned", normalization="none", bias=False)
    model = Transformer(cfg)
    tok, pos, prev, hidden = slice(0, V), slice(V, V + P), slice(V + P, 2 * V + P), slice(2 * V + P, 3 * V + P)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, tok] = torch.eye(V)
        model.W_pos[:, pos] = torch.eye(P)
        a0, a1, a2 = (b.attn for b in model.blocks)
        a0.W_Q[0, pos, :P] = torch.eye(P) * scale
        a0.W_K[0, pos, :P] = torch.diag(torch.ones(P - 1), diagonal=1)
        a0.W_V[0, tok, :V] = torch.eye(V)
        a0.W_O[0, :V, prev] = torch.eye(V)
        a1.W_Q[0, tok, :V] = torch.eye(V) * scale
        a1.W_K[0, prev, :V] = torch.eye(V)
        a1.W_V[0, tok, :V] = torch.eye(V)
        a1.W_O[0, :V, hidden] = torch.eye(V)  # into the hidden subspace: no direct effect on the logits
        a2.W_Q[0, pos, :P] = torch.eye(P) * scale  # attends to its own position
        a2.W_K[0, pos, :P] = torch.eye(P)
        a2.W_V[0, hidden, :V] = torch.eye(V)
        a2.W_O[0, :V, tok] = 2 * torch.eye(V)
        model.W_U[tok, :] = torch.eye(V)
    return model.eval()


def _repeated(model, n=16):
    return repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, seg_len=9, n_repeats=4, n_examples=n, seed=1)


def test_a_head_that_copies_only_through_a_later_layer_reads_plus_one_in_total_and_zero_directly():
    model = relayed_induction()
    tokens, seg = _repeated(model)
    direct = copying_scores(model, tokens)  # [layer, head]
    total = copying_total_statistics(model, tokens, seg, [(1, 0)])
    assert abs(float(direct[1, 0])) < 0.3  # what it writes reaches the logits only through layer 2
    assert float(total["copying_total"].mean()) > 0.9
    assert abs(float(total["null"].mean())) < 0.3  # another token of the sequence is not raised
    assert float(total["margin"].mean()) > 3


def test_on_the_plain_circuit_total_and_direct_copying_agree():
    model = hand_built_induction()
    tokens, seg = _repeated(model)
    total = copying_total_statistics(model, tokens, seg, [(1, 0)])
    assert float(copying_scores(model, tokens)[1, 0]) > 0.9 and float(total["copying_total"].mean()) > 0.9


def test_random_heads_read_about_zero():
    model = Transformer(tiny_config(n_layers=3, d_mlp=32, d_vocab=50, n_ctx=40), seed=3).eval()
    tokens, seg = repeated_random_tokens(50, 40, seg_len=9, n_repeats=4, n_examples=32, seed=2)
    heads = [(l, h) for l in range(3) for h in range(2)]
    total = copying_total_statistics(model, tokens, seg, heads)
    assert total["copying_total"].mean(0).abs().max() < 0.35


def test_the_null_of_a_perfect_copier_is_about_zero_and_its_margin_does_not_saturate():
    tokens = repeated_random_tokens(30, 8, seg_len=7, n_repeats=1, n_examples=16)[0]
    stats = copying_statistics(hand_built_ov(1.0, d_vocab=30), tokens)
    assert float(stats["copying"].mean()) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(stats["null"].mean())) < 0.2

    def noisy(level: float):
        model = hand_built_ov(1.0, d_vocab=30)
        with torch.no_grad():
            model.blocks[0].attn.W_V.add_(level * torch.randn(model.blocks[0].attn.W_V.shape, generator=torch.Generator().manual_seed(0)))
        return copying_statistics(model, tokens)

    clean, blurred = noisy(0.05), noisy(0.15)
    assert float(clean["copying"].mean()) == float(blurred["copying"].mean()) == pytest.approx(1.0)  # the rank share saturates
    assert float(clean["margin"].mean()) > 1.5 * float(blurred["margin"].mean()) > 0  # the margin tells them apart
