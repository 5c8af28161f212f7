"""What the report collects: the viewer's patterns and the composition graph `analyze` stored,
read back without a model; and the viewer's checkpoint choice."""

import numpy as np
import pytest
import torch

from icl_lab.measure import attention_patterns
from icl_lab.pipeline import view_steps
from icl_lab.report.collect import collect_run, describe
from icl_lab.run import open_run_files
from icl_lab.run.results import read_attention, read_composition


def test_view_steps_are_log_spread_with_ends_and_kept_steps():
    steps = list(range(0, 1000, 10))
    picked = view_steps(steps, keep=(500, 12345), n=8)
    assert picked[0] == 0 and picked[-1] == 990 and 500 in picked and 12345 not in picked
    assert len(picked) <= 9 and picked == sorted(set(picked))
    assert view_steps([0, 5, 9], n=8) == [0, 5, 9]


def test_stored_attention_patterns_round_trip_through_uint8(two):
    a = read_attention(open_run_files(two.path))
    n_steps, n_samples, n_layers, n_heads, n_pos, _ = a.patterns.shape
    assert (n_samples, n_layers, n_heads) == (2, 2, 1) and a.steps[-1] == two.checkpoints[-1]
    assert all(len(s["tokens"]) == n_pos for s in a.samples) and a.samples[0]["tokens"][0] == "BOS"
    # the last slice is the final model's pattern on the same tokens, to uint8 precision
    tokens = torch.tensor([[0 if t == "BOS" else int(t) for t in s["tokens"]] for s in a.samples])
    expected = attention_patterns(two.model(), tokens).transpose(0, 1).numpy()  # [sample, layer, head, q, k]
    assert np.abs(a.patterns[-1] / 255 - expected).max() <= 0.5 / 255 + 1e-6
    assert a.tokens == [s * 32 * 64 for s in a.steps]
    # the phase window's edges are on the slider
    pc = two.summary()["phase_change"]
    assert pc["detected"] and {int(pc[k] // (32 * 64)) for k in ("start_tokens", "end_tokens")} <= set(a.steps)


def test_stored_composition_draws_the_k_edge(two, one):
    comp = read_composition(two)
    drawn = {(tuple(e["source"]), tuple(e["target"]), e["mode"]) for e in comp["edges"] if e["drawn"]}
    assert ((0, 0), (1, 0), "k") in drawn
    k = next(e for e in comp["edges"] if e["mode"] == "k")
    assert k["z"] > 10
    assert read_composition(one) is None  # one layer: nothing composes


def test_collect_run_reads_analysis_and_ablation(two):
    data = collect_run(open_run_files(two.path))
    assert data.summary is not None and data.ablation is not None and not data.training and data.missing == []
    assert data.attention is not None and data.composition is not None
    assert "2 layers, d_model 64, 1 head, attention-only" in describe(two)


def test_collect_never_loads_a_checkpoint(two, monkeypatch):
    """The report reads stored files only: loading any checkpoint would fail here."""
    from tests.conftest import refuse_checkpoints

    refuse_checkpoints(monkeypatch, "the report loaded a checkpoint")
    data = collect_run(open_run_files(two.path))
    assert data.attention is not None and data.summary["induction_ablation"]["removed"] > 0.8


def test_a_boosted_run_says_so_wherever_it_is_described(tmp_path):
    import icl_lab

    def line(preset: str) -> str:
        (tmp_path / preset).mkdir()
        (tmp_path / preset / "config.json").write_text(icl_lab.get_preset(preset).model_dump_json())
        return describe(open_run_files(tmp_path / preset))

    boosted = line("natural-boost-2l")
    assert "BOOSTED: 100% of training windows" in boosted and "un-boosted validation text" in boosted and "text (code, bpe)" in boosted
    assert "BOOSTED" not in line("natural-2l")
    assert "repeated data" in line("synthetic-2l")


def test_the_checkpoint_guard_trips_when_a_checkpoint_is_loaded(two, monkeypatch):
    """The guard above must be able to fail: loading the run's model (or a training state) under
    it raises. (The guard it replaces patched `safetensors.torch.load_file`, which no checkpoint
    read calls: it could not fail.)"""
    from icl_lab.train.checkpoint import checkpoint_problem, load_train_state
    from tests.conftest import refuse_checkpoints

    refuse_checkpoints(monkeypatch, "the report loaded a checkpoint")
    with pytest.raises(AssertionError, match="loaded a checkpoint"):
        two.model()
    with pytest.raises(AssertionError, match="loaded a checkpoint"):
        load_train_state(two.layout.checkpoint(two.checkpoints[-1]))
    with pytest.raises(AssertionError, match="loaded a checkpoint"):
        checkpoint_problem(two.layout.checkpoint(0))


def test_the_old_guard_could_not_fail(two, monkeypatch):
    """Patching safetensors' whole-file loaders leaves checkpoint reads working: the reason the
    guards now patch the checkpoint reader itself."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("load_file called")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    assert two.model() is not None
