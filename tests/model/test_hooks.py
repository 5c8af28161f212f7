import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.model import Transformer, hook_name
from tests.conftest import tiny_config


def test_hook_names_and_shapes(tokens):
    cfg = tiny_config(d_mlp=64, normalization="layernorm", positional="rotary")
    model = Transformer(cfg)
    _, cache = model.run_with_cache(tokens)
    b, p, h, e, d = 3, 24, cfg.n_heads, cfg.d_head, cfg.d_model
    expected = {
        "hook_embed": (b, p, d),
        "blocks.0.hook_resid_pre": (b, p, d),
        "blocks.0.ln1.hook_scale": (b, p, 1),
        "blocks.0.ln1.hook_normalized": (b, p, d),
        "blocks.0.attn.hook_q": (b, p, h, e),
        "blocks.0.attn.hook_k": (b, p, h, e),
        "blocks.0.attn.hook_v": (b, p, h, e),
        "blocks.0.attn.hook_rot_q": (b, p, h, e),
        "blocks.0.attn.hook_rot_k": (b, p, h, e),
        "blocks.0.attn.hook_attn_scores": (b, h, p, p),
        "blocks.0.attn.hook_pattern": (b, h, p, p),
        "blocks.0.attn.hook_z": (b, p, h, e),
        "blocks.0.hook_attn_out": (b, p, d),
        "blocks.0.hook_resid_mid": (b, p, d),
        "blocks.0.mlp.hook_pre": (b, p, cfg.d_mlp),
        "blocks.0.mlp.hook_post": (b, p, cfg.d_mlp),
        "blocks.0.hook_mlp_out": (b, p, d),
        "blocks.1.hook_resid_post": (b, p, d),
        "ln_final.hook_normalized": (b, p, d),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
    assert cache.layers("pattern").shape == (2, b, h, p, p)
    assert torch.allclose(cache["pattern", 0].sum(-1), torch.ones(b, h, p))


def test_attn_only_model_has_no_mlp_hooks():
    model = Transformer(tiny_config(positional="learned"))
    assert "hook_pos_embed" in model.hook_dict
    assert not any("mlp" in n or "resid_mid" in n for n in model.hook_dict)


def test_hook_replaces_activation_and_is_removed(tokens):
    model = Transformer(tiny_config())
    clean = model(tokens)

    def zero_head_1(z, *, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_1)])
    assert not torch.allclose(patched, clean)
    assert torch.equal(model(tokens), clean)  # hook gone afterwards
    assert all(not hp.active for hp in model.hook_dict.values())


def test_hooks_removed_when_an_exception_is_raised(tokens):
    model = Transformer(tiny_config())

    def boom(x, *, hook):
        raise RuntimeError("broken hook")

    with pytest.raises(RuntimeError, match="broken hook"):
        with model.hooks([("blocks.0.hook_resid_pre", boom)]):
            model(tokens)
    assert all(not hp.active for hp in model.hook_dict.values())
    model(tokens)  # runs clean


def test_names_filter_and_predicate_hooks(tokens):
    model = Transformer(tiny_config())
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(cache) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    assert list(cache) == ["blocks.0.hook_resid_pre"]
    seen = []
    with model.hooks([(lambda n: "hook_pattern" in n, lambda x, hook: seen.append(hook.name))]):
        model(tokens)
    assert seen == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def test_unknown_hook_name_is_a_one_line_error():
    model = Transformer(tiny_config())
    with pytest.raises(ConfigError, match=r"no hook point named 'blocks.0.attn.hook_patern'"):
        with model.hooks([("blocks.0.attn.hook_patern", lambda x, hook: None)]):
            pass


def test_hook_name_shorthand():
    assert hook_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert hook_name("embed") == "hook_embed"
    with pytest.raises(ConfigError, match="per layer"):
        hook_name("resid_pre")


def test_weights_use_transformer_lens_orientation():
    cfg = tiny_config(d_mlp=16)
    model = Transformer(cfg)
    a = model.blocks[0].attn
    assert a.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert a.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.blocks[0].mlp.W_in.shape == (cfg.d_model, cfg.d_mlp)
    assert model.W_E.shape == (cfg.d_vocab, cfg.d_model) and model.W_U.shape == (cfg.d_model, cfg.d_vocab)


def test_per_head_results_on_request(tokens):
    model = Transformer(tiny_config(d_mlp=16), seed=3).eval()
    logits, full = model.run_with_cache(tokens)
    assert not any(n.endswith("hook_result") for n in full)  # not built unless asked for
    hooked, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_result", "hook_z")))
    assert torch.allclose(hooked, logits, atol=1e-5)
    assert cache["result", 1].shape == (3, 24, 2, 32)
    assert torch.allclose(cache["result", 1], full.head_results(1), atol=1e-6)  # full: computed from hook_z
    _, only = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_result")
    assert torch.equal(only.head_results(1, pos_slice=-1), only["result", 1][:, -1])  # read from the cache

    def zero_result(x, *, hook):
        return x.index_fill(2, torch.tensor([1]), 0.0)

    def zero_z(x, *, hook):
        return x.index_fill(2, torch.tensor([1]), 0.0)

    by_result = model.run_with_hooks(tokens, [("blocks.0.attn.hook_result", zero_result)])
    by_z = model.run_with_hooks(tokens, [("blocks.0.attn.hook_z", zero_z)])
    assert torch.allclose(by_result, by_z, atol=1e-5) and not torch.allclose(by_result, logits, atol=1e-3)
