import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.intervene import KINDS, ablate_head_group, ablate_heads, ablate_heads_serially
from icl_lab.intervene.ablate import _check
from icl_lab.model import Transformer
from tests.conftest import tiny_config


@pytest.fixture
def toks():
    return torch.randint(0, 50, (6, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern_preserving", [True, False], ids=["pattern-preserving", "full"])
def test_batched_sweep_equals_one_pass_per_head(kind, pattern_preserving, toks):
    model = Transformer(tiny_config(n_layers=3, d_mlp=32), seed=2).eval()
    max_bytes = 2 * (6 * 4 * 2 * 6 * 24 * 32)  # 2 a pass
    batched = ablate_heads(model, toks, kind=kind, pattern_preserving=pattern_preserving, max_bytes=max_bytes)
    serial = ablate_heads_serially(model, toks, kind=kind, pattern_preserving=pattern_preserving)
    assert batched.shape == (1 + 3 * 2, 6, 23)
    assert torch.allclose(batched, serial, atol=1e-5)
    assert not torch.allclose(batched[1], batched[0])  # ablating does something


def test_a_head_that_writes_nothing_changes_nothing(toks):
    model = Transformer(tiny_config(), seed=0).eval()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1].zero_()
    for pp in (True, False):
        out = ablate_heads(model, toks, heads=[(0, 1)], kind="resample", pattern_preserving=pp)
        assert torch.equal(out[1], out[0])


def test_pattern_preserving_ablation_in_one_layer_subtracts_the_direct_logit_term(toks):
    model = Transformer(tiny_config(n_layers=1, normalization="none"), seed=3).eval()
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_z"))
    head_out = cache["z", 0][:, :, 1] @ model.blocks[0].attn.W_O[1]  # [batch, pos, d_model]
    expected_logits = logits - head_out @ model.W_U
    expected = torch.nn.functional.cross_entropy(
        expected_logits[:, :-1].reshape(-1, 50), toks[:, 1:].reshape(-1), reduction="none").view(6, 23)
    out = ablate_heads(model, toks, heads=[(0, 1)], kind="zero", pattern_preserving=True)
    assert torch.allclose(out[1], expected, atol=1e-5)


def test_pattern_preserving_freezes_later_patterns(toks):
    model = Transformer(tiny_config(n_layers=2), seed=4).eval()
    # ablating a layer-0 head changes layer-1 patterns only in the full form
    full = ablate_heads(model, toks, heads=[(0, 0)], pattern_preserving=False)
    kept = ablate_heads(model, toks, heads=[(0, 0)], pattern_preserving=True)
    assert not torch.allclose(full[1], kept[1])


def test_unknown_head_or_kind_is_a_clear_error(toks):
    model = Transformer(tiny_config(), seed=0)
    with pytest.raises(ConfigError, match="no head L5H0 in a 2-layer, 2-head model"):
        ablate_heads(model, toks, heads=[(5, 0)])
    with pytest.raises(ConfigError, match="unknown ablation kind 'half'"):
        _check(model, [], "half")  # what ablate_heads(kind="half") raises outside the test's type checker


@pytest.mark.parametrize("over", [dict(positional="shortformer"), dict(positional="rotary", smeared_key=True),
                                  dict(normalization="none", bias=False, n_heads=4, d_model=32),
                                  dict(normalization="rmsnorm", d_mlp=32, gated_mlp=True, act_fn="silu", positional="rotary", bias=False),
                                  dict(d_mlp=32, parallel_attn_mlp=True, positional="rotary", rotary_dim=4)],
                         ids=["shortformer", "rotary-smeared", "no-ln", "llama-like", "neox-like"])
def test_frozen_pattern_shortcut_matches_the_hook_based_reference(over, toks):
    model = Transformer(tiny_config(n_layers=3, **over), seed=5).eval()
    for kind in KINDS:
        fast = ablate_heads(model, toks, kind=kind, pattern_preserving=True, max_bytes=4000)
        assert torch.allclose(fast, ablate_heads_serially(model, toks, kind=kind, pattern_preserving=True), atol=1e-5)


def test_group_ablation_removes_every_head_of_the_group_at_once(toks):
    model = Transformer(tiny_config(n_layers=1, normalization="none"), seed=3).eval()
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_z"))
    heads_out = sum(cache["z", 0][:, :, h] @ model.blocks[0].attn.W_O[h] for h in (0, 1))  # [batch, pos, d_model]
    expected = torch.nn.functional.cross_entropy(
        (logits - heads_out @ model.W_U)[:, :-1].reshape(-1, 50), toks[:, 1:].reshape(-1), reduction="none").view(6, 23)
    out = ablate_head_group(model, toks, [(0, 0), (0, 1)], kind="zero")
    assert out.shape == (2, 6, 23)
    assert torch.allclose(out[1], expected, atol=1e-5)
    one = ablate_head_group(model, toks, [(0, 1)], kind="mean", pattern_preserving=False)
    assert torch.allclose(one, ablate_heads(model, toks, heads=[(0, 1)], kind="mean", pattern_preserving=False), atol=1e-5)
    with pytest.raises(ConfigError, match="needs at least one"):
        ablate_head_group(model, toks, [])


@pytest.mark.parametrize("over", [dict(), dict(d_mlp=32), dict(d_mlp=32, parallel_attn_mlp=True, positional="rotary"),
                                  dict(positional="shortformer", normalization="rmsnorm")],
                         ids=["attn-only", "mlp", "neox-like", "shortformer-rms"])
@pytest.mark.parametrize("pattern_preserving", [True, False], ids=["pattern-preserving", "full"])
def test_scoring_a_few_positions_equals_the_full_sweep_at_those_positions(over, pattern_preserving, toks):
    model = Transformer(tiny_config(n_layers=3, **over), seed=6).eval()
    with torch.no_grad():  # biases and norm gains start at 0 and 1: make them matter
        for p in model.parameters():
            if p.ndim <= 2 and p.shape[0] != model.cfg.d_vocab and p.shape[0] != model.cfg.n_ctx:
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    every = ablate_heads_serially(model, toks, kind="resample", pattern_preserving=pattern_preserving)
    shared = ablate_heads(model, toks, kind="resample", pattern_preserving=pattern_preserving, positions=[2, 21])
    assert shared.shape == (1 + 6, 6, 2)
    assert torch.allclose(shared, every[:, :, [2, 21]], atol=1e-5)
    per_seq = torch.tensor([[0, 5, 22], [1, 1, 9], [3, 4, 5], [22, 0, 7], [8, 9, 10], [11, 12, 13]])
    got = ablate_heads(model, toks, kind="zero", pattern_preserving=pattern_preserving, positions=per_seq, max_bytes=2000)
    want = ablate_heads_serially(model, toks, kind="zero", pattern_preserving=pattern_preserving, positions=per_seq)
    assert torch.allclose(got, want, atol=1e-5)
    every_zero = ablate_heads_serially(model, toks, kind="zero", pattern_preserving=pattern_preserving)
    assert torch.equal(want, every_zero[:, torch.arange(6)[:, None], per_seq])
    assert not torch.allclose(got[1:], got[:1].expand_as(got[1:]), atol=1e-3)  # some ablation moves the loss


def test_positions_out_of_range_are_a_clear_error(toks):
    model = Transformer(tiny_config(), seed=0)
    with pytest.raises(ConfigError, match=r"must lie in 0\.\.22 for 24-token sequences"):
        ablate_heads(model, toks, positions=[23])
    with pytest.raises(ConfigError, match=r"positions must be \[k\] or \[batch=6, k\]"):
        ablate_heads(model, toks, positions=torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern_preserving", [True, False], ids=["pattern-preserving", "full"])
def test_a_sweep_streamed_one_sequence_at_a_time_equals_the_serial_reference(kind, pattern_preserving, toks):
    """Chunking the sequences must not change mean (over every sequence) or resample (the next
    sequence, across chunk edges, the last taking the first's) ablations."""
    model = Transformer(tiny_config(n_layers=3, d_mlp=32, positional="rotary"), seed=8).eval()
    streamed = ablate_heads(model, toks, kind=kind, pattern_preserving=pattern_preserving, positions=[3, 20], max_bytes=1)
    serial = ablate_heads_serially(model, toks, kind=kind, pattern_preserving=pattern_preserving, positions=[3, 20])
    assert torch.allclose(streamed, serial, atol=1e-5)


@pytest.mark.parametrize("over", [dict(d_mlp=32), dict(positional="shortformer"), dict(positional="rotary", smeared_key=True),
                                  dict(normalization="rmsnorm", d_mlp=32, gated_mlp=True, act_fn="silu", positional="rotary", bias=False),
                                  dict(d_mlp=32, parallel_attn_mlp=True, positional="rotary", rotary_dim=4)],
                         ids=["mlp", "shortformer", "rotary-smeared", "llama-like", "neox-like"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern_preserving", [True, False], ids=["pattern-preserving", "full"])
def test_group_ablation_through_the_blocks_equals_the_cached_pattern_reference(over, kind, pattern_preserving, toks):
    """The group ablation copies the clean queries and keys instead of storing every pattern: it
    must equal forcing the stored clean patterns (`hook_pattern`), for a group across layers, one
    sequence at a time or all at once."""
    from icl_lab.intervene.ablate import _ablated_losses, _clean_cache

    model = Transformer(tiny_config(n_layers=3, **over), seed=9).eval()
    group = [(0, 1), (2, 0)]
    with torch.inference_mode():
        clean_logits, cache = _clean_cache(model, toks)
        want = _ablated_losses(model, toks, cache, group, kind, pattern_preserving)
    for max_bytes in (1, 2**30):
        got = ablate_head_group(model, toks, group, kind=kind, pattern_preserving=pattern_preserving, max_bytes=max_bytes)
        assert torch.allclose(got[1], want, atol=1e-5)
        assert torch.allclose(got[0], model.per_token_loss(toks), atol=1e-5)
    few = ablate_head_group(model, toks, group, kind=kind, pattern_preserving=pattern_preserving, positions=[4, 21], max_bytes=1)
    assert torch.allclose(few[1], want[:, [4, 21]], atol=1e-5)
