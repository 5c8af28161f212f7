import math

import pytest
import torch

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.intervene import attribution_patching
from icl_lab.intervene import (
    attribution_patch_heads, attribution_patch_residual, patch_heads, patch_residual, rank_correlation,
)
from icl_lab.measure import repeated_random_tokens
from icl_lab.model import Transformer
from tests.conftest import hand_built_induction, tiny_config


def logit_diff(logits, tokens):
    """Linear in the logits: logit of token 1 minus token 2 at the last position."""
    return logits[:, -1, 1] - logits[:, -1, 2]


def induction_pair(d_vocab: int, n_ctx: int, seg_len: int, n: int = 8):
    """`[BOS] s s` and the same with the first `s` resampled, so the second copy is unpredictable."""
    clean, seg = repeated_random_tokens(d_vocab, n_ctx, seg_len=seg_len, n_repeats=2, n_examples=n, seed=0)
    other, _ = repeated_random_tokens(d_vocab, n_ctx, seg_len=seg_len, n_repeats=2, n_examples=n, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1 : 1 + seg] = other[:, 1 : 1 + seg]
    return clean, corrupted, seg


def second_copy_logit(seg: int):
    """Mean over the second copy of the correct next token's logit minus the mean logit (linear)."""
    def metric(logits, tokens):
        x = logits[:, :-1]
        right = x.gather(-1, tokens[:, 1:, None])[..., 0] - x.mean(-1)
        return right[:, seg + 1 :].mean(1)
    return metric


def second_copy_log_prob(seg: int):
    def metric(logits, tokens):
        log_p = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        return log_p[:, seg + 1 :].mean(1)
    return metric


def test_exact_where_the_model_is_linear():
    """With W_Q = 0 every attention pattern is uniform, so without norms the logits are linear in
    every head output and residual stream: the first-order estimate is the patched metric."""
    model = Transformer(tiny_config(n_layers=3, normalization="none", positional="learned"), seed=4).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
    g = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(0, 50, (3, 10), generator=g), torch.randint(0, 50, (3, 10), generator=g)
    for steps in (1, 3):
        for per_position in (False, True):
            want = patch_heads(model, clean, corrupted, logit_diff, per_position=per_position)
            got = attribution_patch_heads(model, clean, corrupted, logit_diff, per_position=per_position, steps=steps)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
        want = patch_residual(model, clean, corrupted, logit_diff)
        assert torch.allclose(attribution_patch_residual(model, clean, corrupted, logit_diff, steps=steps), want, atol=1e-4)


def test_hand_built_circuit_soft_attention_ranks_like_activation_patching():
    model = hand_built_induction(scale=5.0)
    clean, corrupted, seg = induction_pair(12, 40, 9)
    metric = second_copy_log_prob(seg)
    heads = patch_heads(model, clean, corrupted, metric, per_position=True)
    assert rank_correlation(heads, attribution_patch_heads(model, clean, corrupted, metric, per_position=True)) > 0.9
    resid = patch_residual(model, clean, corrupted, metric)
    assert rank_correlation(resid, attribution_patch_residual(model, clean, corrupted, metric)) > 0.9


def test_saturated_attention_hides_the_previous_token_head():
    """Kramár et al.'s false negative: the previous-token head acts through the induction head's
    saturated softmax, whose gradient vanishes, so its estimate stays at the corrupted metric while
    activation patching moves the metric by over a nat. The induction head's own cells still rank."""
    model = hand_built_induction(scale=200.0)
    clean, _ = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=8, seed=0)
    corrupted, _ = repeated_random_tokens(12, 40, seg_len=9, n_repeats=4, n_examples=8, seed=1)
    metric = second_copy_log_prob(18)  # the corrupted run's own repeats: clean keys misdirect its induction head
    base = metric(model(corrupted), corrupted).mean()
    act, atp = (f(model, clean, corrupted, metric) for f in (patch_heads, attribution_patch_heads))  # [layer, head]
    assert (act[0, 0] - base).abs() > 1.0 and (atp[0, 0] - base).abs() < 1e-3
    act, atp = (f(model, clean, corrupted, metric, per_position=True) for f in (patch_heads, attribution_patch_heads))
    assert rank_correlation(act[1, 0], atp[1, 0]) > 0.95


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """synthetic-2l with 4 heads a layer, trained for 300 steps (~5 s on one thread)."""
    cfg = icl_lab.get_preset("synthetic-2l").replace(
        train={"steps": 300, "n_checkpoints": 2}, model={"n_heads": 4, "d_head": 16})
    return icl_lab.train(cfg, out=tmp_path_factory.mktemp("runs") / "atp").model().eval()


def test_trained_model_heads_rank_like_activation_patching(trained):
    clean, corrupted, seg = induction_pair(128, 64, 20)
    metric = second_copy_logit(seg)
    assert rank_correlation(patch_heads(trained, clean, corrupted, metric),
                            attribution_patch_heads(trained, clean, corrupted, metric)) > 0.9
    act = patch_heads(trained, clean, corrupted, metric, per_position=True)
    atp = attribution_patch_heads(trained, clean, corrupted, metric, per_position=True)
    # the last layer writes the logits directly: a linear metric makes its cells exact
    assert torch.allclose(act[-1], atp[-1], atol=1e-3)
    assert rank_correlation(act, atp) > 0.8


def test_bad_input_fails_in_one_line():
    model = Transformer(tiny_config(), seed=0)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ConfigError, match="differ in shape"):  # the runtime type check catches it first in tests
        attribution_patching._check(tokens, tokens[:, :4], steps=1)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        attribution_patch_residual(model, tokens, tokens, logit_diff, steps=0)
    with torch.inference_mode(), pytest.raises(ConfigError, match="outside torch.inference_mode"):
        attribution_patch_heads(model, tokens, tokens, logit_diff)
    with pytest.raises(ConfigError, match="two tensors of one shape"):
        rank_correlation(torch.ones(3), torch.ones(4))


def test_rank_correlation():
    a = torch.tensor([1.0, 5.0, 2.0, 9.0])
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, torch.tensor([4.0, 3.0, 2.0, 1.0])) == pytest.approx(-0.8)  # 1 - 6 * 18 / 60
    assert rank_correlation(a, torch.tensor([2.0, 1.0, 4.0, 3.0])) == pytest.approx(0.0)  # 1 - 6 * 10 / (4 * 15)
    # ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2) -> 1.5 / sqrt(1.5 * 2)
    assert rank_correlation(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.75 ** 0.5)
    assert math.isnan(rank_correlation(torch.tensor([3.0, 3.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])))
