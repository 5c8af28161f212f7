import pytest
import torch

from icl_lab.measure.composition import composition_baseline, composition_scores, k_composition_eigen_trace, qk_ov
from icl_lab.model import Transformer
from icl_lab.model.export import to_transformer_lens
from tests.conftest import hand_built_induction, tiny_config


def test_hand_built_induction_circuit_composes_through_the_key():
    model = hand_built_induction()
    k, q, v = (composition_scores(model, m)[0, 0, 1, 0].item() for m in "kqv")
    mean, std = composition_baseline(model, "k")
    assert k > mean + 3 * std
    assert q == pytest.approx(0.0, abs=1e-6) and v == pytest.approx(0.0, abs=1e-6)  # disjoint subspaces
    trace = k_composition_eigen_trace(model, torch.tensor([[1.0], [0.0]]))
    assert trace[1, 0] == pytest.approx(1.0, abs=1e-6) and trace[0, 0] == 0.0


def test_only_earlier_into_later_pairs_are_scored():
    s = composition_scores(Transformer(tiny_config(n_layers=3), seed=0), "k")
    assert s.shape == (3, 2, 3, 2)
    assert torch.isnan(s[1, :, 0]).all() and torch.isnan(s[1, :, 1]).all() and not torch.isnan(s[0, :, 2]).any()


def test_random_model_scores_sit_on_the_random_baseline():
    model = Transformer(tiny_config(d_model=64, n_heads=4), seed=1)
    s = composition_scores(model, "v")[0, :, 1].flatten()
    mean, std = composition_baseline(model, "v")
    assert abs(s.mean().item() - mean) < 3 * std


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", ["q", "k", "v"])
def test_composition_scores_match_transformer_lens(mode):
    model = Transformer(tiny_config(n_layers=3, d_mlp=16), seed=2)
    ref = to_transformer_lens(model).all_composition_scores(mode.upper())
    ours = composition_scores(model, mode)
    valid = ~torch.isnan(ours)
    assert torch.allclose(ours[valid], ref[valid], atol=1e-5)


def test_qk_and_ov_orientation():
    model = Transformer(tiny_config(), seed=3)
    qk, ov = qk_ov(model)
    a = model.blocks[1].attn
    assert torch.allclose(qk[1, 0], a.W_Q[0] @ a.W_K[0].T) and torch.allclose(ov[1, 0], a.W_V[0] @ a.W_O[0])


def _dense_scores(model, mode):
    """The definition, in float64 with every d_model x d_model matrix and product formed."""
    qk, ov = (m.double() for m in qk_ov(model))
    L, H, d, _ = qk.shape
    right = {"q": qk, "k": qk.transpose(-1, -2), "v": ov}[mode].reshape(L * H, d, d)
    left = ov.reshape(L * H, d, d)
    prod = torch.einsum("adf,bfg->abdg", left, right).flatten(-2).norm(dim=-1)
    s = prod / (left.flatten(-2).norm(dim=-1)[:, None] * right.flatten(-2).norm(dim=-1)[None, :])
    earlier = (torch.arange(L)[:, None] < torch.arange(L)[None, :]).repeat_interleave(H, 0).repeat_interleave(H, 1)
    return torch.where(earlier, s, float("nan")).view(L, H, L, H)


@pytest.mark.parametrize("mode", ["q", "k", "v"])
@pytest.mark.parametrize("over", [dict(), dict(n_layers=3, n_heads=4), dict(n_layers=4, d_model=48, n_heads=3, d_head=8)],
                         ids=["2l2h", "3l4h", "4l3h-thin"])
def test_factored_scores_equal_the_dense_definition(mode, over):
    model = Transformer(tiny_config(**over), seed=5)
    ours, ref = composition_scores(model, mode).double(), _dense_scores(model, mode)
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))
    valid = ~torch.isnan(ref)
    assert torch.allclose(ours[valid], ref[valid], rtol=1e-5, atol=0)


def _dense_eigen_trace(model, prev_token):
    """The definition: the full [d_vocab, d_vocab] matrix W_E M W_E^T, in float64."""
    qk, ov = (m.double() for m in qk_ov(model))
    W_E = model.W_E.detach().double()
    L, H = qk.shape[:2]
    out = torch.zeros(L, H, dtype=torch.float64)
    for l in range(1, L):
        for h in range(H):
            M = sum(prev_token[p, q].double() * qk[l, h] @ ov[p, q].T for p in range(l) for q in range(H))
            eig = torch.linalg.eigvals(W_E @ M @ W_E.T)
            out[l, h] = eig.sum().real / eig.abs().sum()
    return out


def test_factored_eigen_trace_equals_the_dense_definition():
    model = Transformer(tiny_config(n_layers=3, n_heads=4, d_vocab=20), seed=6)
    prev = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    ours = k_composition_eigen_trace(model, prev)
    ref = _dense_eigen_trace(model, prev)
    assert ours.shape == (3, 4) and (ours[0] == 0).all()
    assert torch.allclose(ours.double(), ref, rtol=1e-4, atol=1e-6)


def test_gpt2_small_sized_scores_run_in_seconds():
    """12 layers x 12 heads at d_model 768: the dense form would need [144, 144, 768, 768] (34 GB);
    the factored one holds a d_model x d_model matrix at a time. ~1-3 s on 2 cores."""
    import time

    model = Transformer(tiny_config(n_layers=12, d_model=768, n_heads=12, d_vocab=64), seed=0)
    start = time.perf_counter()
    s = composition_scores(model, "k")
    trace = k_composition_eigen_trace(model, torch.full((12, 12), 1 / 12))
    elapsed = time.perf_counter() - start
    assert s.shape == (12, 12, 12, 12) and torch.isfinite(s[0, :, 11]).all()
    mean, std = composition_baseline(model, "k", samples=20)
    assert abs(s[0, :, 1].mean().item() - mean) < 3 * std  # random weights score like random matrices
    assert torch.isfinite(trace).all()
    assert elapsed < 20, f"{elapsed:.1f} s"
