import pytest
import torch

from icl_lab.measure import prefix_matching_scores, previous_token_scores, repeated_random_tokens
from icl_lab.measure.head_scores import prefix_matching_mask
from icl_lab.model import Transformer
from tests.conftest import hand_built_induction, tiny_config


def test_repeated_random_tokens_layout():
    toks, seg = repeated_random_tokens(d_vocab=50, n_ctx=64, n_repeats=4, n_examples=3, seed=1)
    assert seg == 15 and toks.shape == (3, 61)
    assert (toks[:, 0] == 0).all()
    body = toks[:, 1:].view(3, 4, 15)
    assert (body == body[:, :1]).all()  # four identical copies
    assert all(len(set(r.tolist())) == 15 for r in body[:, 0])  # distinct tokens, so copies are unambiguous
    assert (toks[:, 1:] != 0).all()


def test_prefix_matching_mask_points_after_earlier_copies():
    m = prefix_matching_mask(n_pos=1 + 3 * 4, seg_len=4)  # BOS + 3 repeats of a 4-token segment
    # query at position 9 (3rd repeat, index 0): earlier copies at 5 and 1; the tokens after them at 6 and 2
    assert m[9].nonzero().flatten().tolist() == [2, 6]
    assert m[:5].sum() == 0  # first repeat and BOS have no earlier copy
    assert m[5].nonzero().flatten().tolist() == [2]


def test_hand_built_previous_token_head_scores_one():
    model = hand_built_induction()
    toks = torch.randint(1, 12, (4, 40), generator=torch.Generator().manual_seed(0))
    scores = previous_token_scores(model, toks)
    assert scores.shape == (2, 1)
    assert scores[0, 0] >= 0.99
    assert scores[1, 0] < 0.5


def test_hand_built_induction_head_scores_one():
    model = hand_built_induction()
    toks, seg = repeated_random_tokens(d_vocab=12, n_ctx=40, seg_len=9, n_repeats=4, n_examples=6, seed=0)
    scores = prefix_matching_scores(model, toks, seg_len=seg)
    assert scores[1, 0] >= 0.99
    assert scores[0, 0] < 0.2  # the previous-token head is not an induction head
    # and the circuit really copies: on later repeats the model predicts the next token
    logits = model(toks)
    pred = logits[:, 1 + seg : -1].argmax(-1)
    assert (pred == toks[:, 2 + seg :]).float().mean() > 0.99


def test_uniform_attention_gives_the_chance_score():
    # with all-zero QK weights every query attends uniformly: the score is (#targets)/(#keys) per query
    model = Transformer(tiny_config(n_layers=1, positional="learned", n_ctx=41), seed=0)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.zero_()
    toks, seg = repeated_random_tokens(50, 41, seg_len=10, n_repeats=4, n_examples=2)
    mask = prefix_matching_mask(41, seg)
    rows = mask.sum(-1) > 0
    chance = (mask.sum(-1)[rows] / (torch.arange(41)[rows] + 1)).mean()
    scores = prefix_matching_scores(model, toks, seg_len=seg)
    assert torch.allclose(scores, torch.full_like(scores, float(chance)), atol=1e-5)


def test_scores_need_seg_len_with_explicit_tokens():
    from icl_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="needs seg_len"):
        prefix_matching_scores(hand_built_induction(), torch.zeros(1, 5, dtype=torch.long))


def test_random_models_score_like_each_other():
    # the random-initialisation baseline is meaningful: two random inits agree closely
    toks, seg = repeated_random_tokens(50, 24, seg_len=5, n_repeats=4, n_examples=10, seed=3)
    a = prefix_matching_scores(Transformer(tiny_config(), seed=1), toks, seg_len=seg)
    b = prefix_matching_scores(Transformer(tiny_config(), seed=2), toks, seg_len=seg)
    assert (a - b).abs().max() < 0.05
    one, two = (previous_token_scores(Transformer(tiny_config(), seed=s), toks) for s in (1, 2))
    assert (one - two).abs().max() < 0.05


def test_rare_and_common_tokens_are_left_out():
    from icl_lab.measure.evalset import rare_and_common_tokens

    tokens = torch.cat([torch.full((50,), 3), torch.arange(20).repeat(2), torch.tensor([7] * 10)])
    out = rare_and_common_tokens(tokens, d_vocab=20, fraction=0.1)
    assert 3 in out and 7 in out and len(out) == 4
    toks, _ = repeated_random_tokens(20, 41, seg_len=10, exclude=[0, *out])
    assert not set(toks[:, 1:].flatten().tolist()) & set(out)


def test_streamed_pattern_scores_equal_the_cached_patterns():
    """The layer-by-layer reduction (memory-bounded, chunked) equals scoring the stored patterns."""
    from icl_lab.measure.head_scores import attention_patterns, masked_attention_score, masked_pattern_scores

    model = Transformer(tiny_config(n_layers=3, d_mlp=16), seed=7).eval()
    tokens, seg = repeated_random_tokens(50, 24, n_repeats=3, n_examples=7, seed=2)
    mask = prefix_matching_mask(tokens.shape[1], seg)
    expected = masked_attention_score(attention_patterns(model, tokens), mask)
    assert torch.allclose(masked_pattern_scores(model, tokens, mask, max_bytes=1), expected, atol=1e-6)
