"""The LLC estimator against answers known exactly: a full-rank linear regression has λ = d/2, and
the same regression with every weight split into two redundant copies still has λ = d/2, below
its parameter count's 2d/2. Then the icl-lab side: the TransformerLens `.to` keyword devinterp
sends, per-head masks that select exactly one head's weights, and the health diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from icl_lab.errors import ConfigError
from icl_lab.model import Transformer
from tests.conftest import tiny_config

pytest.importorskip("devinterp")

from icl_lab.measure.llc import LLCEstimate, SGLDSettings, head_masks, llc, sample_llc  # noqa: E402

D, N = 4, 512


class Linear(nn.Module):
    """y = x·w, or x·(u + v) with `redundant` (a flat direction per weight)."""

    def __init__(self, w: torch.Tensor, redundant: bool = False) -> None:
        super().__init__()
        self.redundant = redundant
        self.u = nn.Parameter(w / 2 if redundant else w.clone())
        self.v = nn.Parameter(w / 2) if redundant else None

    def weight(self) -> torch.Tensor:
        return self.u + self.v if self.redundant else self.u


def regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + torch.randn(N, generator=gen)
    w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]  # the empirical minimum: the LLC's w0
    return x, y, w_star


def gaussian_loss(x: torch.Tensor, y: torch.Tensor):
    """Rows [i, i] index the data; the 'per-token' loss [batch, 1] is the Gaussian NLL ½(y − x·w)²."""

    def loss(model: Linear, rows: torch.Tensor) -> torch.Tensor:
        i = rows[:, 0]
        return (0.5 * (y[i] - x[i] @ model.weight()) ** 2)[:, None]

    return loss


# full batches (exact gradients) and a step well inside the stable range, so the only biases are
# ε-discretisation and γ (each < 2% here); nβ·h ≫ γ in every direction
EXACT = SGLDSettings(lr=2e-4, nbeta=N / math.log(N) * 10, gamma=1.0, chains=4, draws=600, batch_size=N)


def test_regular_model_has_half_its_dimension():
    x, y, w_star = regression()
    rows = torch.arange(N)[:, None].repeat(1, 2)
    est = sample_llc(Linear(w_star), rows, EXACT, loss_fn=gaussian_loss(x, y))
    assert est.value == pytest.approx(D / 2, rel=0.1)
    assert est.health()["ok"], est.health()["problems"]


def test_redundant_parameters_lower_the_llc_below_half_the_parameter_count():
    x, y, w_star = regression()
    rows = torch.arange(N)[:, None].repeat(1, 2)
    model = Linear(w_star, redundant=True)
    assert sum(p.numel() for p in model.parameters()) == 2 * D
    est = sample_llc(model, rows, EXACT, loss_fn=gaussian_loss(x, y))
    assert est.value == pytest.approx(D / 2, rel=0.1)  # the flat u − v directions add nothing
    assert est.value < 0.75 * (2 * D) / 2


def test_estimate_is_the_devinterp_formula_and_leaves_the_model_alone():
    x, y, w_star = regression()
    rows = torch.arange(N)[:, None].repeat(1, 2)
    model = Linear(w_star)
    s = EXACT.replace(draws=50, chains=2)
    est = sample_llc(model, rows, s, loss_fn=gaussian_loss(x, y))
    from devinterp.slt.llc import llc as devinterp_llc

    ref = devinterp_llc(model, _Rows(rows), {}, lr=s.lr, n_beta=s.nbeta, localization=s.gamma, num_chains=2,
                        num_draws=50, batch_size=N, init_seed=0, loss_fn=gaussian_loss(x, y))
    assert est.value == pytest.approx(float(ref.llc_mean), rel=1e-5)  # float32 reduction order
    assert torch.equal(model.u.detach(), w_star)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i]}


def test_transformer_accepts_transformer_lens_to_keyword():
    m = Transformer(tiny_config())
    assert m.to("cpu", print_details=False) is m


def test_head_masks_select_exactly_one_heads_slices():
    m = Transformer(tiny_config(bias=True))
    masks = head_masks(m, 1, 1)
    assert set(masks) == {f"blocks.1.attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
    for name, mask in masks.items():
        param = dict(m.named_parameters())[name]
        assert mask.shape == param.shape
        assert mask[1].all() and not mask[0].any()  # [head, ...]: head 1 only


def test_llc_on_a_transformer_with_heads_and_healthy_flags():
    torch.manual_seed(0)
    m = Transformer(tiny_config(d_vocab=20, n_ctx=12))
    tokens = torch.randint(0, 20, (64, 12), generator=torch.Generator().manual_seed(1))
    est = llc(m, tokens, SGLDSettings(chains=2, draws=20, batch_size=16), heads=True)
    assert set(est.heads) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert est.trace.shape == (2, 20)
    assert est.nbeta == pytest.approx(16 * 11 / math.log(16 * 11))
    assert np.isfinite(est.value) and all(np.isfinite(h.value) for h in est.heads.values())
    assert est.reference_loss == pytest.approx(math.log(20))


def test_health_names_each_problem():
    trace = np.array([[1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4]] * 2)  # still climbing
    drifting = LLCEstimate(10.0, [10.0, 10.1], 1.0, trace, 10.0, reference_loss=2.0)
    h = drifting.health()
    assert not h["ok"] and any("drifts" in p for p in h["problems"]) and any("gave back" in p for p in h["problems"])
    flat = LLCEstimate(3.0, [3.0, 3.1], 1.0, np.full((2, 8), 1.05), 60.0, reference_loss=4.0)
    assert flat.health()["ok"]
    negative = LLCEstimate(-1.0, [-1.0, -1.0], 1.0, np.full((2, 8), 0.99), 60.0)
    assert any("not positive" in p for p in negative.health()["problems"])


def test_interval_is_students_t_over_chains_and_a_diverged_chain_is_named():
    est = LLCEstimate(2.5, [1.0, 2.0, 3.0, 4.0], 1.0, np.full((4, 8), 1.01), 60.0)
    lo, hi = est.interval()  # mean 2.5, sample sd 1.291, t(3) 3.182: half-width 2.054
    assert (lo, hi) == pytest.approx((2.5 - 2.054, 2.5 + 2.054), abs=1e-3)
    assert LLCEstimate(2.0, [2.0], 1.0, np.full((1, 8), 1.01), 60.0).interval() == (2.0, 2.0)
    trace = np.full((2, 8), 1.0)
    trace[1, 5:] = np.nan
    diverged = LLCEstimate(float("nan"), [1.0, float("nan")], 1.0, trace, 60.0, reference_loss=4.0).health()
    assert not diverged["ok"] and diverged["problems"] == ["a chain diverged (non-finite loss); lower ε"]


def test_bad_settings_and_too_few_sequences_are_one_line_errors():
    with pytest.raises(ConfigError, match="lr"):
        SGLDSettings.parse({"lr": -1})
    m = Transformer(tiny_config())
    with pytest.raises(ConfigError, match="fewer than one SGLD batch"):
        llc(m, torch.zeros(4, 8, dtype=torch.long), SGLDSettings(batch_size=8))


def test_a_heads_estimate_is_judged_against_the_head_itself():
    """Issue #27: a head's refined LLC gets its own health check. Its chains give back a share of
    what the head contributes (the loss rise when its output is zeroed), and its spread counts
    relative to the estimate down to 0.1. The same chains pass the whole-model check."""
    trace = np.full((4, 8), 1.03)  # flat, 0.03 nats above the checkpoint's loss
    chains = [0.2, 0.5, 0.3, 0.4]  # sd 0.13 on an estimate of 0.35: 37% apart
    m = Transformer(tiny_config(d_vocab=20, n_ctx=12))
    tokens = torch.randint(0, 20, (64, 12), generator=torch.Generator().manual_seed(1))
    est = llc(m, tokens, SGLDSettings(chains=2, draws=8, batch_size=16), heads=True)
    head = est.heads[(1, 0)]
    assert head.scale == 0.1 and head.min_gain == 0.01
    from icl_lab.measure.llc import head_contribution

    assert head.reference_loss - head.init_loss == pytest.approx(head_contribution(m, tokens, 1, 0))
    as_model = LLCEstimate(0.35, chains, 1.0, trace, 10.0, reference_loss=1.0 + math.log(20))
    as_head = LLCEstimate(0.35, chains, 1.0, trace, 10.0, reference_loss=1.04, scale=0.1, min_gain=0.01)
    assert as_model.health()["ok"]
    problems = as_head.health()["problems"]
    assert any("disagree" in p for p in problems) and any("gave back" in p for p in problems)
