"""One induction rule, read everywhere (issue #27): the report's composition colours, the text
signals and the summary name the heads `icl_lab.measure.induction` names; the rule reads direct or
total copying; bootstrap means leave NaN examples out instead of counting them as 0; the most
any other head removes does not depend on where NaN shares sit; one PCA space needs one
evaluation set."""

import math

import numpy as np
import pytest
import torch

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.measure.induction import induction_heads, induction_rule, passes_direct_rule
from icl_lab.measure.intervals import mean_interval


def test_the_rule_reads_the_larger_of_direct_and_total_copying():
    relayed = {"layer": 1, "head": 0, "prefix_matching": 0.9, "copying": 0.0, "copying_total": 0.8}
    direct = {"layer": 1, "head": 1, "prefix_matching": 0.9, "copying": 0.8, "copying_total": float("nan")}
    unmeasured = {"layer": 1, "head": 2, "prefix_matching": 0.9, "copying": 0.8}
    neither = {"layer": 1, "head": 3, "prefix_matching": 0.9, "copying": 0.2, "copying_total": 0.3}
    soft = {"layer": 1, "head": 4, "prefix_matching": 0.4, "copying": 0.9, "copying_total": 0.9}
    assert induction_heads([relayed, direct, unmeasured, neither, soft]) == [(1, 0), (1, 1), (1, 2)]
    assert not passes_direct_rule(relayed) and passes_direct_rule(direct)
    assert induction_rule() == "prefix_matching > 0.5 and max(copying, copying_total) > 0.5"


def test_the_composition_graph_colours_the_rules_heads_not_every_prefix_matcher():
    from icl_lab.report.collect import RunData
    from icl_lab.report.figures import composition_figure

    heads = [{"layer": 0, "head": 0, "prefix_matching": 0.1, "copying": 0.1},
             {"layer": 1, "head": 0, "prefix_matching": 0.9, "copying": 0.1},  # matches prefixes, copies nothing
             {"layer": 1, "head": 1, "prefix_matching": 0.9, "copying": 0.9}]
    summary = {"heads": heads, "induction_heads": [{"layer": 1, "head": 1}]}
    edges = [{"source": [0, 0], "target": [1, h], "mode": "k", "score": 0.5, "z": 5.0, "drawn": True} for h in (0, 1)]
    comp = {"step": 1, "edges": edges, "baselines": {m: {"mean": 0.1, "std": 0.05} for m in "qkv"}, "edge_z": 2.0}
    import pandas as pd

    run = RunData(name="r", path="r", description="", training=False, log=pd.DataFrame(), metrics=None, summary=summary,
                  ablation=None, attention=None, composition=comp)
    fig = composition_figure([run])
    nodes = [t for t in fig.data if t.mode == "markers+text"][0]
    colours = dict(zip(nodes.text, nodes.marker.color))
    assert colours["L1H1"] == "#ff7f0e" and colours["L1H0"] == "#cccccc"


def test_text_signals_name_the_heads_the_rule_names(monkeypatch):
    import sys

    from icl_lab.measure import make_text_probe

    ts = sys.modules["icl_lab.measure.text_signals"]  # the package exports a function of the same name

    model = icl_lab.Transformer(icl_lab.ModelConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=60, n_ctx=40), seed=0).eval()
    probe = make_text_probe(np.random.default_rng(0).integers(1, 60, 5000).astype(np.uint16), 40, 60, 0, n_windows=4, n_passages=2)
    monkeypatch.setattr(ts, "induction_heads", lambda records: [(1, 1)])  # whatever the rule says, text_signals repeats it
    assert ts.text_signals(model, probe)["induction_heads"] == [[1, 1]]


def test_a_previous_token_head_is_a_layer_0_head_in_the_text_signals_too(monkeypatch):
    """One definition (issue #26): the ladder's signals counted a head of any layer above 0.5,
    the ladder's table and the reproduction layer 0 only."""
    import sys

    from icl_lab.measure import make_text_probe

    ts = sys.modules["icl_lab.measure.text_signals"]
    model = icl_lab.Transformer(icl_lab.ModelConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=60, n_ctx=40), seed=0).eval()
    probe = make_text_probe(np.random.default_rng(0).integers(1, 60, 5000).astype(np.uint16), 40, 60, 0, n_windows=4, n_passages=2)
    scores = torch.tensor([[0.9, 0.2], [0.95, 0.1]])  # [layer, head]: a layer-1 head attends to the previous token too
    monkeypatch.setattr(ts, "previous_token_scores", lambda model, tokens: scores)
    assert ts.text_signals(model, probe)["prev_token_heads"] == [[0, 0]]


def test_bootstrap_means_leave_nan_examples_out():
    per = torch.tensor([[1.0, 10.0], [1.0, 10.0], [1.0, float("nan")], [1.0, float("nan")]] * 8)
    lo, hi = mean_interval(per)
    assert lo[1] == pytest.approx(10.0) and hi[1] == pytest.approx(10.0)  # counted as 0 before: an interval near 5
    lo, hi = mean_interval(torch.full((6,), float("nan")))
    assert math.isnan(lo) and math.isnan(hi)


def test_the_most_any_other_head_removes_ignores_nan_wherever_it_sits():
    from icl_lab.reproduce.circuit_args import most_removed

    assert most_removed([float("nan"), 0.3, 0.1]) == most_removed([0.3, float("nan"), 0.1]) == 0.3
    assert math.isnan(most_removed([float("nan")])) and math.isnan(most_removed([]))


def test_trajectories_refuse_runs_without_a_shared_evaluation_set(tmp_path):
    from icl_lab.measure.trajectories import loss_trajectories

    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 4, "warmup_steps": 1, "n_checkpoints": 2})
    a = icl_lab.train(cfg, out=tmp_path / "a")
    b = icl_lab.train(cfg.replace(data={"max_period": 12}), out=tmp_path / "b")
    with pytest.raises(ConfigError, match="b evaluate on other data than a"):
        loss_trajectories([a, b], n_examples=8)
    table, _ = loss_trajectories([a, icl_lab.train(cfg.replace(seed=1), out=tmp_path / "c")], n_examples=8)
    assert set(table.run) == {"a", "c"}


def test_the_summary_group_ablation_has_an_interval(tmp_path):
    from icl_lab.pipeline.analyze import group_ablation
    from icl_lab.pipeline.evalstore import eval_set_for

    run = icl_lab.train(icl_lab.get_preset("synthetic-2l").replace(train={"steps": 600}), out=tmp_path / "r")
    g = group_ablation(run, eval_set_for(run, 64), [(1, 0)], None, None)
    lo, hi = g["removed_ci"]
    assert lo <= g["removed"] <= hi and g["n_examples"] == 64
