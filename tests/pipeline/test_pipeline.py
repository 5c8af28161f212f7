"""The measurement pipeline: one checkpoint load per step for any number of measurements, a new
measure is one class and one registration, `--only` measures just what it names, and each
metric's provenance says what it was computed with."""

import subprocess
import sys

import pytest

import icl_lab
import icl_lab.pipeline.base as base
from icl_lab.errors import ConfigError
from icl_lab.pipeline import REGISTRY, Measurement, analyze, measure_run, measurements, register, walk
from icl_lab.pipeline.evalstore import eval_set_for


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 60, "warmup_steps": 10, "n_checkpoints": 6})
    return icl_lab.train(cfg, out=tmp_path_factory.mktemp("runs") / "r")


class StepParity(Measurement):
    name, description = "step_parity", "1 on even steps, 0 on odd ones (a test measurement)"
    needs_eval_set = False

    def measure(self, ctx):
        return [ctx.row(self.name, float(ctx.step % 2 == 0))]

    def settings(self):
        return {"rule": "even"}


def test_each_checkpoint_is_loaded_once_for_every_measurement(run, monkeypatch):
    loads = []
    real = base.load_weights_into
    monkeypatch.setattr(base, "load_weights_into", lambda model, path: loads.append(path) or real(model, path))
    ev = eval_set_for(run, 16)
    table = walk(run, measurements(["loss", "icl_score", "prefix_matching", "copying_direct"]), ev)
    assert len(loads) == len(run.checkpoints) == len(set(loads))
    assert set(table.metric) == {"loss", "icl_score", "prefix_matching", "copying_direct"}
    assert set(table.step) == set(run.checkpoints)


def test_a_new_measure_is_one_class_and_one_registration(run):
    register(StepParity)
    try:
        stored = measure_run(run, ["step_parity"])
        rows = stored[stored.metric == "step_parity"].sort_values("step")
        assert list(rows.value) == [float(s % 2 == 0) for s in run.checkpoints]
        prov = run.store.provenance("step_parity")
        assert prov["measurement"] == "step_parity" and prov["rule"] == "even" and "icl-lab" in prov["versions"]
        measure_run(run, ["step_parity"])  # measuring again replaces its rows, never duplicates them
        assert (run.store.read().metric == "step_parity").sum() == len(run.checkpoints)
    finally:
        REGISTRY.pop("step_parity", None)


def test_unknown_measurement_is_one_clear_line(run):
    with pytest.raises(ConfigError, match="unknown measurement 'nope'; choose from .*prefix_matching"):
        analyze([run], only=["nope"])


def test_only_measures_what_it_names_and_keeps_the_rest(tmp_path):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 40, "warmup_steps": 10, "n_checkpoints": 5})
    run = icl_lab.train(cfg, out=tmp_path / "r")
    cli = [sys.executable, "-m", "icl_lab.cli", "analyze", str(run.path), "--examples", "16"]
    r = subprocess.run([*cli, "--only", "prefix_matching,icl_score"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(run.store.read().metric) == {"prefix_matching", "icl_score"} and not run.layout.summary.is_file()
    assert "no summary yet" in r.stderr and "Traceback" not in r.stderr
    # the full analysis builds the summary; a later --only replaces just its own rows
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    before = run.store.read()
    summary = run.summary()
    r = subprocess.run([*cli, "--only", "copying_direct"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    after = run.store.read()
    assert len(after) == len(before) and set(after.metric) == set(before.metric)
    assert run.summary()["induction_heads"] == summary["induction_heads"]
    r = subprocess.run([*cli, "--only", "nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown measurement 'nope'" in r.stderr and "Traceback" not in r.stderr
    listing = subprocess.run([*cli, "--only", "list"], capture_output=True, text=True).stdout
    assert "prefix_matching" in listing and "attention_viewer" in listing and "ablation" in listing
