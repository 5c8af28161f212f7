"""`analyze` end to end on short real runs: the 2-layer model's phase change is found, the 1-layer
control's is not, and the table and summary have their documented shape."""

import json
import subprocess
import sys

import numpy as np
import pytest

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.pipeline import analyze
from icl_lab.pipeline.analyze import BESIDE


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for preset in ("synthetic-2l", "synthetic-1l"):
        cfg = icl_lab.get_preset(preset).replace(train={"steps": 700, "n_checkpoints": 40})
        out.append(icl_lab.train(cfg, out=root / preset))
    return out


@pytest.fixture(scope="module")
def summaries(runs):
    return analyze(runs, n_examples=64)


def test_two_layer_phase_change_is_detected_and_the_control_has_none(runs, summaries):
    two, one = summaries[str(runs[0].path)], summaries[str(runs[1].path)]
    pc = two["phase_change"]
    assert pc["detected"] and pc["start_tokens"] < pc["end_tokens"]
    assert pc["overlap"] > 0 and pc["loss_bump"] is not None
    assert two["icl_score"]["initial"] > -0.05 and two["icl_score"]["final"] < -2.0
    assert one["phase_change"]["detected"] is False and one["phase_change"]["start_tokens"] is None
    best = max(two["heads"], key=lambda h: h["prefix_matching"])
    assert (best["layer"], best["head"]) == (1, 0) and best["prefix_matching"] > 0.7
    # the flagship's induction head is named by the one rule, and it copies
    assert two["induction_heads"] == [{"layer": 1, "head": 0}] and best["copying"] >= 0.9
    assert one["induction_heads"] == []


def test_summary_keys_are_stable(summaries):
    s = next(iter(summaries.values()))
    assert {"phase_change", "icl_score", "heads", "induction_heads", "induction_rule", "provenance", "pca"} <= set(s)
    assert {"detected", "start_tokens", "end_tokens", "loss_bump", "overlap"} <= set(s["phase_change"])
    assert set(s["icl_score"]) >= {"initial", "final", "final_ci"}
    always = {"layer", "head", "prefix_matching", "copying", "copying_direct", "copying_olsson",
              "previous_token", "duplicate_token", "ov_eigen_positivity", "ci"}
    for h in s["heads"]:
        # the copying null and margin stand beside every copying score; copying_total only where measured
        assert always | {"copying.null", "copying.margin"} <= set(h) <= always | set(BESIDE), h
    measured = [h for h in s["heads"] if "copying_total" in h]
    assert measured and all(h["prefix_matching"] > 0.3 for h in measured)
    assert s["induction_rule"]["thresholds"] == {"prefix_matching": 0.5, "copying": 0.5}
    assert {"versions", "eval_set", "analysis_version"} <= set(s["provenance"]) and s["provenance"]["eval_set"].startswith("sha256:")
    json.dumps(s)  # serialisable as is


def test_tidy_table_and_files(runs, summaries):
    run = runs[0]
    table = run.metrics()
    assert list(table.columns) == ["run", "step", "tokens", "metric", "layer", "head", "position", "value", "baseline", "lo", "hi"]
    assert set(table.metric) >= {"loss", "icl_score", "loss_by_position", "dloss_dlnpos", "prefix_matching",
                                 "previous_token", "duplicate_token", "copying", "copying_direct", "copying_olsson",
                                 "ov_eigen_positivity", "pca_1", "pca_2"}
    # 95% intervals bracket every averaged score, and weight-only scores have none
    ci = table[table.metric.isin(["icl_score", "prefix_matching", "copying"])]
    assert ci.lo.notna().all() and ((ci.lo <= ci.value + 1e-9) & (ci.value <= ci.hi + 1e-9)).all()
    assert table[table.metric == "ov_eigen_positivity"].lo.isna().all()
    final_icl = table[(table.metric == "icl_score") & (table.step == table.step.max())].iloc[0]
    assert final_icl.hi - final_icl.lo < 0.5 and final_icl.hi < 0  # a trained induction model: sure of its ICL
    assert set(table.step) == set(run.checkpoints)
    heads = table[table.metric == "prefix_matching"]
    assert len(heads) == len(run.checkpoints) * 2 and heads.baseline.notna().all()
    by_pos = table[(table.metric == "loss_by_position") & (table.step == 0)]
    assert by_pos.position.min() == 1 and by_pos.position.max() == 63
    assert run.summary() == summaries[str(run.path)]
    ba = json.loads(run.layout.before_after.read_text())
    assert len(ba["vector"]) == 64 and np.isclose(np.linalg.norm(ba["vector"]), 1.0)
    assert ba["start_step"] < ba["end_step"]
    # the joint PCA puts both runs in one space: same explained variance in both summaries
    assert summaries[str(runs[0].path)]["pca"] == summaries[str(runs[1].path)]["pca"]


def test_analysis_is_deterministic(runs, summaries):
    again = analyze(runs[:1], n_examples=64, write=False)[str(runs[0].path)]
    assert again["heads"] == summaries[str(runs[0].path)]["heads"]
    assert again["icl_score"] == summaries[str(runs[0].path)]["icl_score"]


def test_cli_json_prints_only_the_summary(runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "analyze", str(runs[1].path), "--json", "--examples", "32"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["phase_change"]["detected"] is False


def test_runs_of_other_shapes_get_their_own_evaluation_set(runs, tmp_path):
    cfg = icl_lab.get_preset("synthetic-2l").replace(model={"d_vocab": 64}, train={"steps": 10, "warmup_steps": 2})
    other = icl_lab.train(cfg, out=tmp_path / "v64")
    out = analyze([runs[1], other], n_examples=32, write=False)
    a, b = out[str(runs[1].path)], out[str(other.path)]
    assert a["provenance"]["eval_set"] != b["provenance"]["eval_set"]
    assert a["pca"]["runs"] == [str(runs[1].path)] and b["pca"]["runs"] == [str(other.path)]
    with pytest.raises(ConfigError, match="at least one run"):
        analyze([])


def test_the_order_of_the_runs_changes_no_number(runs):
    ab = analyze(runs, n_examples=32, write=False)
    ba = analyze(runs[::-1], n_examples=32, write=False)
    for key in ab:
        assert ab[key] == ba[key]


def test_the_stored_evaluation_set_is_the_one_measured(runs, summaries):
    from icl_lab.measure.evalset import make_eval_set
    from icl_lab.pipeline.evalstore import load_eval_set

    ev = load_eval_set(runs[0])
    assert ev.fingerprint == summaries[str(runs[0].path)]["provenance"]["eval_set"]
    assert ev.fingerprint == make_eval_set(runs[0], 64).fingerprint
    assert ev.repeated.shape[0] >= 32 and (ev.repeated[:, 0] == 0).all()  # BOS first, at least 32 sequences


def test_analysis_runs_in_another_dtype_with_the_same_answers(runs, summaries):
    again = analyze(runs[:1], n_examples=64, write=False, device="cpu", dtype="fp64")[str(runs[0].path)]
    ref = summaries[str(runs[0].path)]
    assert again["induction_heads"] == ref["induction_heads"]
    for a, b in zip(again["heads"], ref["heads"]):
        assert a["prefix_matching"] == pytest.approx(b["prefix_matching"], abs=1e-4)
        assert a["copying"] == pytest.approx(b["copying"], abs=1e-3)
    assert again["icl_score"]["final"] == pytest.approx(ref["icl_score"]["final"], abs=1e-3)


def test_a_bad_device_or_dtype_is_a_one_line_error(runs):
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "analyze", str(runs[1].path), "--dtype", "fp8"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown dtype 'fp8'" in r.stderr and "Traceback" not in r.stderr
