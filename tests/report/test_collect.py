"""What the report collects: checkpoint choice, attention patterns, composition edges."""

import numpy as np
import torch

from icl_lab.measure import attention_patterns
from icl_lab.report.collect import collect_attention, collect_composition, collect_run, describe, view_steps


def test_view_steps_are_log_spread_with_ends_and_kept_steps():
    steps = list(range(0, 1000, 10))
    picked = view_steps(steps, keep=(500, 12345), n=8)
    assert picked[0] == 0 and picked[-1] == 990 and 500 in picked and 12345 not in picked
    assert len(picked) <= 9 and picked == sorted(set(picked))
    assert view_steps([0, 5, 9], n=8) == [0, 5, 9]


def test_attention_patterns_round_trip_through_uint8(two):
    a = collect_attention(two)
    n_steps, n_samples, n_layers, n_heads, n_pos, _ = a.patterns.shape
    assert (n_samples, n_layers, n_heads) == (2, 2, 1) and a.steps[-1] == two.checkpoints[-1]
    assert all(len(s["tokens"]) == n_pos for s in a.samples) and a.samples[0]["tokens"][0] == "BOS"
    # the last slice is the final model's pattern on the same tokens, to uint8 precision
    tokens = torch.tensor([[0 if t == "BOS" else int(t) for t in s["tokens"]] for s in a.samples])
    expected = attention_patterns(two.model(), tokens).transpose(0, 1).numpy()  # [sample, layer, head, q, k]
    assert np.abs(a.patterns[-1] / 255 - expected).max() <= 0.5 / 255 + 1e-6
    assert a.tokens == [s * 32 * 64 for s in a.steps]


def test_trained_composition_draws_the_k_edge(two, one):
    comp = collect_composition(two)
    drawn = {(tuple(e["source"]), tuple(e["target"]), e["mode"]) for e in comp["edges"] if e["drawn"]}
    assert ((0, 0), (1, 0), "k") in drawn
    k = next(e for e in comp["edges"] if e["mode"] == "k")
    assert k["z"] > 10
    assert collect_composition(one) is None  # one layer: nothing composes


def test_collect_run_reads_analysis_and_ablation(two):
    data = collect_run(two)
    assert data.summary is not None and data.ablation is not None and not data.training
    assert "2 layers, d_model 64, 1 head, attention-only" in describe(two)
