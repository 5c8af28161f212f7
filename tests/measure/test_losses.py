import numpy as np
import pytest
import torch

from icl_lab.data import DataConfig, sample_batch
from icl_lab.measure import dloss_dlnpos, icl_positions, icl_score, loss_by_token, per_token_losses
from tests.conftest import hand_built_induction


def test_icl_positions_follow_the_paper_and_scale():
    assert icl_positions(512) == (50, 500)
    assert icl_positions(64) == (6, 63)
    assert icl_positions(1024) == (100, 1000)
    early, late = icl_positions(8)
    assert 1 <= early < late <= 7


def test_icl_score_sign_and_value_on_a_known_curve():
    loss = torch.tensor([float("nan")] + [5.0] * 10 + [1.0] * 53)  # 64 tokens: easy late, hard early
    assert icl_score(loss) == pytest.approx(-4.0)
    assert icl_score(torch.full((64,), 3.0)) == 0.0


def test_dloss_dlnpos_of_a_log_linear_curve_is_constant():
    t = torch.arange(1, 64, dtype=torch.float64)
    loss = torch.cat([torch.tensor([float("nan")], dtype=torch.float64), 4.0 - 0.5 * torch.log(t)])
    slope = dloss_dlnpos(loss)
    assert np.allclose(slope[1:-1], -0.5, atol=1e-2)  # central differences are exact up to curvature of ln


def test_hand_built_induction_model_learns_in_context():
    model = hand_built_induction()  # predicts the next token once the sequence repeats
    batch = sample_batch(DataConfig(min_period=4, max_period=8, max_offset=4), 12, 40, 64, torch.Generator().manual_seed(0))
    per_token = per_token_losses(model, batch.tokens, max_bytes=1)  # one sequence at a time
    assert per_token.shape == (64, 39)
    assert torch.allclose(per_token, per_token_losses(model, batch.tokens), atol=1e-6)  # chunking changes nothing
    by_token = loss_by_token(per_token)
    assert torch.isnan(by_token[0]) and by_token.shape == (40,)
    assert icl_score(by_token) < -1.0
    # and the repeats, where the circuit has an earlier copy to find, are where the loss is low
    assert per_token[batch.repeat_mask].mean() < per_token[~batch.repeat_mask].mean() - 0.8
