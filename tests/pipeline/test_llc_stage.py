"""`icl-lab llc` end to end on a short run: rows and provenance in the store, llc.json with health
and stages, checkpoint fan-out over the local pool equal to the serial walk, calibration that
records its grid and choice, and the one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.measure.llc import SGLDSettings
from icl_lab.pipeline import analyze, calibrate_run, fan_out, llc_run, measure_run
from icl_lab.pipeline.llc import llc_settings, llc_steps, read_calibration, reusable_llc
from icl_lab.run.results import read_llc

pytest.importorskip("devinterp")

FAST = SGLDSettings(chains=2, draws=12, batch_size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 60, "warmup_steps": 10, "n_checkpoints": 6})
    r = icl_lab.train(cfg, out=tmp_path_factory.mktemp("runs") / "r")
    analyze([r], only=["prefix_matching", "previous_token"])
    return r


def _llc_rows(run) -> pd.DataFrame:
    t = run.store.read()
    t = t[t.metric.str.startswith("llc")]
    return t.sort_values(["step", "metric", "layer", "head"], na_position="first").reset_index(drop=True)


def test_llc_stores_rows_health_and_a_summary(run):
    torch.set_num_threads(1)
    summary = llc_run(run, FAST, heads=True)
    rows = _llc_rows(run)
    assert set(rows.metric) == {"llc", "llc.head", "llc.head.healthy", "llc.drift", "llc.spread", "llc.give_back", "llc.healthy"}
    steps = run.checkpoints
    assert sorted(rows[rows.metric == "llc"].step) == steps
    heads = rows[rows.metric == "llc.head"]
    assert len(heads) == len(steps) * 2 and set(heads.layer) == {0, 1}  # synthetic-2l: 2 layers x 1 head
    assert len(rows[rows.metric == "llc.head.healthy"]) == len(heads)
    llc = rows[rows.metric == "llc"]
    assert (llc.hi - llc.lo > 0).all()  # two chains that never agree exactly: a real interval at every step
    prov = run.store.provenance("llc")
    assert prov["sgld"]["draws"] == 12 and prov["heads"] and prov["sgld_data"].startswith("sha256:")
    stored = read_llc(run)
    assert stored["steps"] == steps and len(stored["llc"]) == len(steps)
    assert stored["warnings"] and "uncalibrated" in stored["warnings"][-1]  # no calibration was given
    assert {"stages", "previous_token_window", "two_part_bump"} <= set(stored["stages"])
    assert summary["timing"]["checkpoints"] == len(steps)
    assert reusable_llc(run, FAST, heads=True) == stored  # `--reuse`: the same settings, heads and steps
    assert reusable_llc(run, FAST) is None and reusable_llc(run, FAST.replace(draws=13), heads=True) is None
    assert reusable_llc(run, FAST, heads=True, checkpoints=2) is None
    other = run.store.read()
    assert {"prefix_matching", "previous_token"} <= set(other.metric)  # the analysis rows stay


def test_report_draws_the_llc_axis_and_the_per_head_column(run, tmp_path):
    from icl_lab.report import write_report
    from icl_lab.report.collect import collect_run
    from icl_lab.report.table import final_table_html

    analyze([run])  # the full analysis (the table's other columns and summary.json); the llc rows stay
    llc_run(run, FAST, heads=True)
    data = collect_run(run)
    assert data.llc is not None and len(data.llc["llc"]) == len(run.checkpoints)
    table = final_table_html(data)
    assert "<th>per-head LLC</th>" in table and table.count("<tr") == 1 + 2  # header + one row per head
    page = write_report([run.path], out=tmp_path / "r.html").path.read_text()
    assert "LLC (dashed)" in page and "local learning coefficient" in page


def test_fan_out_over_the_local_pool_equals_the_serial_walk(run):
    torch.set_num_threads(1)
    llc_run(run, FAST)
    serial = _llc_rows(run)
    llc_run(run, FAST, executor="local", jobs=2, threads=1)
    fanned = _llc_rows(run)
    pd.testing.assert_frame_equal(serial, fanned)


def test_generic_fan_out_of_an_analysis_measurement_equals_serial(run):
    torch.set_num_threads(1)
    measure_run(run, ["previous_token"])
    serial = run.store.read().query("metric == 'previous_token'").reset_index(drop=True)
    measure_run(run, ["previous_token"], executor="local", jobs=2, threads=1)
    fanned = run.store.read().query("metric == 'previous_token'").reset_index(drop=True)
    pd.testing.assert_frame_equal(serial, fanned)


def test_stateful_measurements_refuse_to_fan_out(run):
    with pytest.raises(ConfigError, match="cannot fan out"):
        fan_out(run, "attention_viewer")


def test_calibration_records_its_grid_and_choice(run):
    grid = {"lr": (1e-4, 1e-3), "gamma": (1000.0,), "nbeta": (None,)}
    cal = calibrate_run(run, FAST, grid)
    record = json.loads((run.layout.analysis_dir / "llc_calibration.json").read_text())
    assert len(record["grid"]) == 2 * len(cal.steps) and record["chosen"]["lr"] in (1e-4, 1e-3)
    assert record["rule"].startswith("healthy at every step")
    assert cal.chosen.draws == FAST.draws  # only epsilon, gamma and nbeta are calibrated
    assert read_calibration(run.path) == read_calibration(run.layout.analysis_dir / "llc_calibration.json") == record
    settings, used = llc_settings(run, FAST)  # the run's own calibration, stored just now
    assert (settings.lr, settings.gamma, settings.draws) == (cal.chosen.lr, 1000.0, FAST.draws) and used == record
    assert settings.burnin == cal.chosen.burnin > FAST.burnin  # the burn-in the grid judged health after
    assert llc_settings(run, FAST, overrides={"burnin": 0})[0].burnin == 0
    settings, used = llc_settings(run, FAST, overrides={"lr": 3e-4})  # a flag wins, and the record says so
    assert settings.lr == 3e-4 and used == {**record, "overridden": {"lr": 3e-4}}
    other = {"chosen": {"lr": 5e-5, "gamma": 300.0, "nbeta": 10.0}}  # another run's calibration wins over this run's
    assert llc_settings(run, FAST, other)[0].nbeta == 10.0
    assert llc_settings(run, FAST, other)[0].burnin == FAST.burnin  # an older record without a burn-in keeps base's


def test_a_missing_or_damaged_calibration_is_one_line(tmp_path):
    (tmp_path / "c.json").write_text('{"chosen": {}}')
    with pytest.raises(ConfigError, match=r"c.json is not a readable llc_calibration.json; run `icl-lab llc RUN --calibrate` first$"):
        read_calibration(tmp_path / "c.json")
    with pytest.raises(ConfigError, match=r"analysis/llc_calibration.json is not a readable"):
        read_calibration(tmp_path)  # a run directory: its analysis/llc_calibration.json


def test_checkpoint_subset_is_log_spaced_with_both_ends():
    steps = [0, 1, 2, 3, 4, 5, 6, 8, 10, 20, 50, 100, 200, 500, 1000]
    picked = llc_steps(steps, 5)
    assert len(picked) == 5 and picked[0] == 0 and picked[-1] == 1000
    assert llc_steps(steps, None) == steps
    with pytest.raises(ConfigError, match="at least 2"):
        llc_steps(steps, 1)


def test_cli_measures_reuses_and_rejects_conflicting_flags(run):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "icl_lab.cli", "llc", str(run.path), *args], capture_output=True, text=True)

    # --burnin wins over a calibration another test may have stored on this run (40 steps)
    flags = ("--checkpoints", "3", "--chains", "2", "--draws", "8", "--batch-size", "16", "--lr", "1e-4", "--burnin", "0")
    r = cli(*flags, "--json")  # the default: a local pool, one task per core
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["steps"]) == 3 and out["settings"]["sgld"]["lr"] == 1e-4 and out["settings"]["sgld"]["burnin"] == 0
    again = cli(*flags, "--reuse")
    assert again.returncode == 0 and "LLC" in again.stdout
    assert read_llc(run)["timing"] == out["timing"]  # reused: nothing was re-measured
    assert out["timing"]["executor"] == "local"
    serial = cli(*flags, "--executor", "serial", "--device", "cpu", "--dtype", "fp32", "--json")
    assert serial.returncode == 0  # the same estimates in one process (its torch may use more threads: to rounding)
    assert json.loads(serial.stdout)["llc"] == pytest.approx(out["llc"], rel=1e-5)
    assert json.loads(serial.stdout)["timing"]["device"] == "cpu" and out["timing"]["dtype"] == "fp32"
    bad = cli("--calibrate", "--lr", "1e-3")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--calibrate chooses" in bad.stderr
    odd = cli("--executor", "dask")
    assert odd.returncode == 1 and "choose serial, local, slurm, ray" in odd.stderr
