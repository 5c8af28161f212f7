"""Forward control and other tools inside the model: backward hooks see (and may replace) the
gradient at a hook point; PyTorch's own module hooks on a HookPoint run and force the explicit
attention path where they need the pattern; and an nnsight trace (test extra) reads and edits
`blocks.1.attn.hook_pattern` with the same result as our own hooks."""

import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.model import Transformer
from tests.conftest import tiny_config

PATTERN = "blocks.1.attn.hook_pattern"


def _model() -> Transformer:
    return Transformer(tiny_config(d_mlp=16, normalization="layernorm"), seed=4).eval()


def _attend_to_first(x, hook=None):
    """Head 0 of every query attends only to position 0."""
    x = x.clone()
    x[:, 0] = 0
    x[:, 0, :, 0] = 1
    return x


def test_backward_hooks_see_the_gradient_at_the_hook_point(tokens):
    model = _model()
    grads = {}
    logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.1.attn.hook_z", lambda g, hook: grads.update({hook.name: g}))])
    logits[:, -1, 3].sum().backward()
    # the same gradient by hand: make z a leaf of the graph, then ask autograd
    held = {}

    def keep(z, hook):
        held["z"] = z
        z.retain_grad()

    model.zero_grad()
    model.run_with_hooks(tokens, [("blocks.1.attn.hook_z", keep)])[:, -1, 3].sum().backward()
    assert grads["blocks.1.attn.hook_z"].shape == (3, 24, 2, 16)
    assert torch.allclose(grads["blocks.1.attn.hook_z"], held["z"].grad)
    assert not model.hook_dict["blocks.1.attn.hook_z"].fns  # removed after the run


def test_a_backward_hook_can_replace_the_gradient(tokens):
    model = _model()
    model.run_with_hooks(tokens, bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: torch.zeros_like(g))]).sum().backward()
    assert model.blocks[1].attn.W_V.grad.abs().sum() > 0 and model.W_U.grad.abs().sum() > 0
    assert model.W_E.grad.abs().max() == 0 and model.blocks[0].attn.W_Q.grad.abs().max() == 0  # cut off behind layer 0


def test_a_backward_hook_without_gradients_fails_in_one_line(tokens):
    with torch.no_grad(), pytest.raises(ConfigError, match=r"backward hook on blocks.0.hook_resid_pre: .* run outside torch.no_grad"):
        _model().run_with_hooks(tokens, bwd_hooks=[("blocks.0.hook_resid_pre", lambda g, hook: None)])


def test_pytorch_forward_hooks_on_a_hook_point_run_and_can_edit(tokens):
    model = _model()
    ours = model.run_with_hooks(tokens, [(PATTERN, _attend_to_first)])
    seen = []
    hp = model.hook_dict[PATTERN]
    handles = [hp.register_forward_pre_hook(lambda m, args: seen.append("pre")),
               hp.register_forward_hook(lambda m, args, out: _attend_to_first(out))]
    try:
        assert hp.active  # so the attention builds the pattern for the hook to see
        assert torch.allclose(model(tokens), ours, atol=1e-6) and seen == ["pre"]
    finally:
        for h in handles:
            h.remove()
    assert not hp.active and not torch.allclose(model(tokens), ours, atol=1e-3)


def test_global_module_hooks_see_hook_points(tokens):
    model = _model()
    names = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: names.append(m.name) if hasattr(m, "fns") else None)
    try:
        model(tokens)
    finally:
        handle.remove()
    assert set(names) == set(model.hook_dict)


def test_nnsight_reads_and_edits_the_pattern_as_our_hooks_do(tokens):
    nnsight = pytest.importorskip("nnsight")
    model = _model()
    logits, cache = model.run_with_cache(tokens, names_filter=PATTERN)
    edited = model.run_with_hooks(tokens, [(PATTERN, _attend_to_first)])
    traced = nnsight.NNsight(model)
    with traced.trace(tokens):
        pattern = traced.blocks[1].attn.hook_pattern.output.save()
        out = traced.output.save()
    assert torch.allclose(pattern, cache[PATTERN]) and torch.allclose(out, logits, atol=1e-6)
    with traced.trace(tokens):
        traced.blocks[1].attn.hook_pattern.output = _attend_to_first(traced.blocks[1].attn.hook_pattern.output)
        out = traced.output.save()
    assert torch.allclose(out, edited, atol=1e-6) and not torch.allclose(edited, logits, atol=1e-3)
