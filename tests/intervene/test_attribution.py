"""Ablation attribution over a short real run: the induction head carries the ICL score."""

import json
import math
import os
import subprocess
import sys

import pytest

import icl_lab
from icl_lab.intervene import removed_fraction
from icl_lab.pipeline import ablate_run, is_ablated, is_analysed, reusable_ablation, reusable_analysis


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 700, "n_checkpoints": 16})
    return icl_lab.train(cfg, out=tmp_path_factory.mktemp("runs") / "two")


def test_induction_head_carries_the_icl_score(run):
    summary = ablate_run(run, kinds=("zero",))
    heads = {(h["layer"], h["head"]): h for h in summary["heads"]}
    assert heads[(1, 0)]["icl_removed_fraction"] >= 0.8
    assert abs(heads[(0, 0)]["icl_removed_fraction"]) <= 0.2
    # full ablation of the previous-token head breaks the induction head's keys
    assert heads[(0, 0)]["by_kind"]["zero"]["full"] > heads[(0, 0)]["by_kind"]["zero"]["pattern_preserving"] + 0.2
    table = run.metrics()
    rows = table[table.metric == "ablation.zero.pattern_preserving.icl_removed_fraction"]
    assert set(rows.step) == set(run.checkpoints) and len(rows) == 2 * len(run.checkpoints)
    assert (table.metric == "ablation.zero.full.before_after_projection").any()
    # the analysis rows are still there, and a second ablate replaces rather than duplicates
    assert (table.metric == "prefix_matching").any()
    ablate_run(run, kinds=("zero",))
    assert len(run.metrics()) == len(table)
    # re-analysing keeps the ablation rows
    from icl_lab.pipeline import analyze

    analyze([run])
    assert len(run.metrics()) == len(table)
    assert (run.metrics().metric == "ablation.zero.pattern_preserving.icl_removed_fraction").sum() == len(rows)


def test_reuse_checks_see_what_is_done(run):
    """`--reuse` skips work only when the tables cover exactly what was asked, after the last checkpoint."""
    ablate_run(run, kinds=("zero",))
    assert is_analysed([run]) and not is_analysed([run], n_examples=128) and not is_analysed([run, run])
    assert is_ablated(run, ("zero",)) and not is_ablated(run, ("zero", "mean"))
    ablate_run(run, kinds=("resample",))  # another kind joins the table without removing the first
    assert is_ablated(run, ("zero", "resample"))
    assert reusable_analysis([run]) == {str(run.path): run.summary()} and reusable_analysis([run], only=["icl_score"]) is None
    assert reusable_ablation(run, ("zero",))["step"] == run.checkpoints[-1] and reusable_ablation(run, ("mean",)) is None
    last = run.layout.checkpoint(run.checkpoints[-1])
    later = run.layout.metrics.stat().st_mtime + 5
    os.utime(last, (later, later))  # a checkpoint newer than the analysis: both go stale
    assert not is_analysed([run]) and not is_ablated(run, ("zero",))
    assert reusable_analysis([run]) is None and reusable_ablation(run, ("zero",)) is None


def test_removed_fraction_is_undefined_without_icl():
    assert removed_fraction(-2.0, -0.5) == pytest.approx(0.75)
    assert math.isnan(removed_fraction(0.1, -0.5))


def test_cli_ablate_json(run):
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "ablate", str(run.path), "--kind", "mean", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON (jq and browsers refuse it)"))
    assert {h["layer"] for h in s["heads"]} == {0, 1} and "mean" in s["heads"][0]["by_kind"]
    bad = subprocess.run([sys.executable, "-m", "icl_lab.cli", "ablate", str(run.path), "--kind", "half"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown ablation kind 'half'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_trained_circuit_is_k_composition(run):
    """Argument 5 on a trained model: previous-token head L0H0 -> induction head L1H0 through keys."""
    import torch.nn.functional as F

    from icl_lab.intervene import path_patch
    from icl_lab.measure import composition_baseline, composition_scores, repeated_random_tokens

    model = run.model()
    mean, std = composition_baseline(model, "k")
    assert composition_scores(model, "k")[0, 0, 1, 0] > mean + 3 * std
    clean, seg = repeated_random_tokens(128, 64, n_examples=16, seed=0)
    corrupt, _ = repeated_random_tokens(128, 64, n_examples=16, seed=1)

    def repeat_loss(logits, tokens):
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        return loss.view(len(tokens), -1)[:, seg:].mean(1)

    out = path_patch(model, clean, corrupt, sender=(0, 0), receiver=(1, 0), metric=repeat_loss)
    moved = {w: abs(out[w] - out["clean"]) for w in "qkv"}
    assert moved["k"] > 5 * max(moved["q"], moved["v"]) and moved["k"] > 1.0


def test_shares_of_an_icl_score_within_noise_are_left_empty():
    import torch

    from icl_lab.intervene.attribution import _head_rows

    gen = torch.Generator().manual_seed(0)
    clean = 0.3 * torch.randn(64, generator=gen)  # no in-context learning: an interval around 0
    icl = torch.stack([clean, clean + 0.5, clean - 0.2])  # [1 + head, example]
    rows = _head_rows("ablation.zero.full", [(0, 0), (0, 1)], icl, (icl * 0).numpy(), None)
    frac = [r for r in rows if r["metric"].endswith("icl_removed_fraction")]
    assert all(math.isnan(r["value"]) and math.isnan(r["lo"]) for r in frac)
    delta = [r for r in rows if r["metric"].endswith("icl_delta")]
    assert delta[0]["value"] == pytest.approx(0.5) and delta[0]["lo"] <= 0.5 <= delta[0]["hi"]
    # with real ICL the share and its interval are there
    icl = torch.stack([clean - 3.0, 0.1 * (clean - 3.0), clean - 3.0])
    rows = _head_rows("ablation.zero.full", [(0, 0), (0, 1)], icl, (icl * 0).numpy(), None)
    frac = [r for r in rows if r["metric"].endswith("icl_removed_fraction")]
    assert frac[0]["value"] == pytest.approx(0.9, abs=1e-5) and frac[0]["lo"] <= 0.9 + 1e-5 <= frac[0]["hi"] + 2e-5
    assert frac[1]["value"] == pytest.approx(0.0, abs=1e-6)


def test_analyze_and_ablate_at_the_same_time_keep_both_sides_rows(tmp_path):
    """Both commands write their rows while the other runs: neither may lose the other's. (The test
    before this one ran a full `analyze` first, so a lost analyze write could not show.)"""
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 200, "n_checkpoints": 12, "warmup_steps": 20})
    run = icl_lab.train(cfg, out=tmp_path / "r")
    from icl_lab.pipeline import analyze

    analyze([run], n_examples=32, only=["loss"])  # the evaluation set ablate reads, and no head score yet
    cli = [sys.executable, "-m", "icl_lab.cli"]
    procs = [subprocess.Popen([*cli, "analyze", str(run.path), "--examples", "32", "--only", "prefix_matching,copying"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
             subprocess.Popen([*cli, "ablate", str(run.path), "--kind", "zero"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    for p in procs:
        assert p.wait(180) == 0, p.stderr.read().decode()
    table = run.metrics()
    steps = set(run.checkpoints)
    for metric in ("loss", "prefix_matching", "copying", "ablation.zero.pattern_preserving.icl_removed_fraction"):
        assert set(table[table.metric == metric].step) == steps, metric
