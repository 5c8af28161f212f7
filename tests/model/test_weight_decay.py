"""Which parameters get weight decay: chosen by rank (issue #28), not by the `W_` name prefix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from icl_lab.model import Transformer
from icl_lab.train.config import TrainConfig
from icl_lab.train.trainer import build_optimizer
from tests.conftest import tiny_config

CONFIGS = [dict(), dict(d_mlp=64, normalization="layernorm", bias=True), dict(smeared_key=True, bias=True),
           dict(d_mlp=64, gated_mlp=True, act_fn="silu", normalization="rmsnorm", positional="rotary"),
           dict(d_mlp=64, parallel_attn_mlp=True, bias=True, positional="shortformer", normalization="layernorm")]


@pytest.mark.parametrize("over", CONFIGS)
def test_the_rank_rule_picks_the_named_weight_matrices(over):
    """On every built-in layout the rule picks exactly the W_* parameters (the convention held)."""
    model = Transformer(tiny_config(**over))
    by_name = {name for name, p in model.named_parameters() if name.rsplit(".", 1)[-1].startswith("W_")}
    picked = {name for name, p in model.named_parameters() if any(p is q for q in model.weight_matrices())}
    assert picked == by_name and picked


def test_a_new_matrix_is_decayed_whatever_its_name():
    """A parameter added without the W_ prefix (a new model option) is still a matrix: the old
    name rule silently left it without weight decay."""
    model = Transformer(tiny_config(d_mlp=64, bias=True, normalization="layernorm"))
    model.blocks[0].register_parameter("gate_extra", nn.Parameter(torch.zeros(8, 32)))
    model.blocks[0].register_parameter("scale_extra", nn.Parameter(torch.ones(32)))
    picked = [p for p in model.weight_matrices()]
    assert any(p is model.blocks[0].gate_extra for p in picked)
    assert not any(p is model.blocks[0].scale_extra for p in picked)
    opt = build_optimizer(model, TrainConfig(steps=10, weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.blocks[0].gate_extra) in decayed and id(model.blocks[0].scale_extra) not in decayed
    assert id(model.blocks[0].attn.b_Q) not in decayed  # a per-head bias [head, d_head] is a vector per head
