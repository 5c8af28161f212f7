"""The Markov-chain measures on hand-built cases: the strategies computed exactly on a tiny
sequence, KL 0 for a model that predicts the bigram strategy, the stage ranges, and the
statistical-induction-head score (1 on a hand-set pattern, chance on uniform attention)."""

import pytest
import torch

from icl_lab.organisms.markov.measure import (
    follower_mask,
    kl_to_strategies,
    nearest,
    previous_token_share,
    stage_ranges,
    statistical_induction_scores,
    strategy_probs,
)

TOKENS = torch.tensor([[0, 1, 0, 0, 1]])


def test_strategies_by_hand():
    s = strategy_probs(TOKENS, n_states=2, alpha=1.0)
    # position t predicts x_{t+1}; unigram (count + 1) / (t + 1 + 2); bigram out of the current state
    unigram = torch.tensor([[2 / 3, 1 / 3], [1 / 2, 1 / 2], [3 / 5, 2 / 5], [4 / 6, 2 / 6], [4 / 7, 3 / 7]])
    bigram = torch.tensor([[1 / 2, 1 / 2], [1 / 2, 1 / 2], [1 / 3, 2 / 3], [1 / 2, 1 / 2], [2 / 3, 1 / 3]])
    torch.testing.assert_close(s["unigram"][0], unigram)
    torch.testing.assert_close(s["bigram"][0], bigram)
    torch.testing.assert_close(s["uniform"][0], torch.full((5, 2), 0.5))


def test_kl_is_zero_for_the_bigram_strategy():
    tokens = torch.randint(0, 3, (8, 40), generator=torch.Generator().manual_seed(0))
    s = strategy_probs(tokens, 3)
    kls = kl_to_strategies(s["bigram"].log(), s, skip=4)
    assert kls["bigram"] == pytest.approx(0.0, abs=1e-6)
    assert kls["unigram"] > 0.01 and kls["uniform"] > 0.01 and nearest(kls) == "bigram"
    assert nearest(kl_to_strategies(s["uniform"].log(), s)) == "uniform"


def test_stage_ranges():
    assert stage_ranges([0, 10, 20, 30, 40], ["uniform", "uniform", "unigram", "bigram", "bigram"]) == [
        {"stage": "uniform", "start": 0, "end": 10}, {"stage": "unigram", "start": 20, "end": 20},
        {"stage": "bigram", "start": 30, "end": 40}]


def test_follower_mask_by_hand():
    # query 4 (token 1): keys j <= 4 with x_{j-1} == 1 -> j = 2
    assert follower_mask(TOKENS)[0, 4].tolist() == [0, 0, 1, 0, 0]
    # query 3 (token 0): x_{j-1} == 0 at j = 1, 3, 4 but j <= 3 -> 1, 3
    assert follower_mask(TOKENS)[0, 3].tolist() == [0, 1, 0, 1, 0]


def test_statistical_induction_score_is_one_on_a_hand_set_pattern_and_chance_on_uniform():
    tokens = torch.randint(0, 3, (4, 64), generator=torch.Generator().manual_seed(1))
    mask = follower_mask(tokens)  # [batch, query_pos, key_pos]
    fallback = torch.zeros_like(mask)
    fallback[..., 0] = 1.0  # queries without a follower look at position 0 (they are not scored)
    perfect = torch.where(mask.sum(-1, keepdim=True) > 0, mask / mask.sum(-1, keepdim=True).clamp(min=1), fallback)
    causal = torch.ones(64, 64).tril()
    uniform = (causal / causal.sum(-1, keepdim=True)).expand(4, 64, 64)
    pattern = torch.stack([perfect, uniform], 1)  # [batch, head, query_pos, key_pos]
    score, chance = statistical_induction_scores(pattern, tokens)
    assert score[0] == pytest.approx(1.0, abs=1e-6)
    assert score[1] == pytest.approx(chance, abs=1e-6) and abs(chance - 1 / 3) < 0.05


def test_previous_token_share():
    prev = torch.zeros(1, 1, 5, 5)
    prev[0, 0, 0, 0] = 1.0
    prev[0, 0, torch.arange(1, 5), torch.arange(0, 4)] = 1.0
    assert previous_token_share(prev).tolist() == [1.0]
