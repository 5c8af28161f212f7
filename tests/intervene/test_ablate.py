import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.intervene import KINDS, ablate_head_group, ablate_heads, ablate_heads_serially
from icl_lab.model import Transformer
from tests.conftest import tiny_config


@pytest.fixture
def toks():
    return torch.randint(0, 50, (6, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pattern_preserving", [True, False], ids=["pattern-preserving", "full"])
def test_batched_sweep_equals_one_pass_per_head(kind, pattern_preserving, toks):
    model = Transformer(tiny_config(n_layers=3, d_mlp=32), seed=2).eval()
    batched = ablate_heads(model, toks, kind=kind, pattern_preserving=pattern_preserving, max_elements=2 * 6 * 2 * 24 * 24)  # 2 a pass
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
        ablate_heads(model, toks, kind="half")


@pytest.mark.parametrize("over", [dict(positional="shortformer"), dict(positional="rotary", smeared_key=True),
                                  dict(normalization="none", bias=False, n_heads=4, d_model=32),
                                  dict(normalization="rmsnorm", d_mlp=32, gated_mlp=True, act_fn="silu", positional="rotary", bias=False),
                                  dict(d_mlp=32, parallel_attn_mlp=True, positional="rotary", rotary_dim=4)],
                         ids=["shortformer", "rotary-smeared", "no-ln", "llama-like", "neox-like"])
def test_frozen_pattern_shortcut_matches_the_hook_based_reference(over, toks):
    model = Transformer(tiny_config(n_layers=3, **over), seed=5).eval()
    for kind in KINDS:
        fast = ablate_heads(model, toks, kind=kind, pattern_preserving=True, max_elements=1000)
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
