"""`icl-lab reproduce` end to end at the tiny scale (every argument, reduced steps), its verdict
rows, reuse, and the Argument 4 measurement on a hand-built induction circuit."""

import json
import math
import subprocess
import sys

from pathlib import Path

import pytest
import torch

from icl_lab.data.tasks import sample_task
from icl_lab.errors import ConfigError
from icl_lab.reproduce import ARGUMENTS, SCALES, check, experiment, parse_arguments, reproduce
from icl_lab.reproduce.generality import task_effects
from icl_lab.train.config import ExperimentConfig
from tests.conftest import hand_built_induction

KEYS = {"argument", "claim", "metric", "value", "threshold", "passed"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    lines = []
    result = reproduce(["all"], out=out, scale="tiny", log=lines.append)
    return out, result, lines


def test_every_argument_writes_its_section_and_verdict_table(lab):
    out, result, lines = lab
    assert [s.argument for s in result.sections] == list(ARGUMENTS)
    for section in result.sections:
        assert section.checks and section.figures and section.claim, section.argument
    rows = json.loads(result.verdicts_json.read_text())
    assert {r["argument"] for r in rows} == set(ARGUMENTS) and all(set(r) == KEYS for r in rows)
    page = result.report.read_text()
    for name in ARGUMENTS:
        assert f'<section id="{name}">' in page
    assert page.count("<table class=checks>") >= len(ARGUMENTS) and "plotly" in page.lower()
    assert any(line.startswith("training attn-2l-s0") for line in lines)


def test_a_second_run_reuses_every_run_and_the_cli_prints_json(lab):
    out, result, _ = lab
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "reproduce", "argument-2", "5", "--out", str(out),
                        "--scale", "tiny", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["argument"] for row in rows} == {"argument-2", "argument-5"}
    assert "training" not in r.stderr  # nothing retrained
    before = {c.metric: c.value for c in result.checks if c.argument == "argument-5"}
    for row in rows:
        if row["argument"] == "argument-5" and row["value"] is not None:
            assert row["value"] == pytest.approx(before[row["metric"]], rel=1e-6)


def test_bad_input_gets_one_line(lab, tmp_path):
    out, _, _ = lab
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "reproduce", "argument-7", "--scale", "tiny", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown argument 'argument-7'" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ConfigError, match="another --scale"):
        reproduce(["argument-5"], out=out, scale="default")
    with pytest.raises(ConfigError, match="unknown scale"):
        reproduce(["all"], out=tmp_path, scale="huge")


def test_argument_names():
    assert parse_arguments(["all"]) == list(ARGUMENTS)
    assert parse_arguments(["6", "argument-1", "1"]) == ["argument-1", "argument-6"]
    with pytest.raises(ConfigError, match="at least one"):
        parse_arguments([])


def test_checks_compare_and_nan_fails():
    assert check("a", "c", "m", 0.81, ">=", 0.8).passed and not check("a", "c", "m", 0.79, ">=", 0.8).passed
    assert check("a", "c", "m", 0.0, "==", 0).passed and not check("a", "c", "m", 1.0, "<", 1).passed
    nan = check("a", "c", "m", math.nan, "<=", 0.2)
    assert not nan.passed and nan.to_json()["value"] is None and nan.threshold == "<= 0.2"


def test_every_scale_builds_valid_experiments():
    for scale in SCALES.values():
        for name in ("attn-1l", "mlp-3l-2w", "attn-2l-4w", "mixture-2l-4h", "smeared-2l"):
            cfg = experiment(name, scale, seed=1)
            assert cfg.model.d_vocab == scale.d_vocab and cfg.seed == 1
    assert experiment("mixture-2l-4h", SCALES["default"]).train.steps == 2 * SCALES["default"].steps


def test_task_effects_on_a_hand_built_induction_circuit():
    """The hand-built L1H0 attends to the literal source and carries the repeats; L0H0 (previous
    token) attends elsewhere, and with patterns preserved its ablation changes nothing."""
    model = hand_built_induction(d_vocab=40, n_ctx=40)
    batch = sample_task("repeated", 40, 40, 32, torch.Generator().manual_seed(0), min_period=4, max_period=8)
    e = task_effects(model, batch, [(1, 0)])
    assert e["attention"][(1, 0)] > 0.8 and e["attention"][(0, 0)] < 0.2
    assert e["group_rise"] > 1.0 and e["group_rise"] == pytest.approx(e["rise"][(1, 0)], abs=1e-5)
    assert abs(e["rise"][(0, 0)]) < 1e-4


def test_natural_reproduction_runs_arguments_1_and_3_on_text(tmp_path):
    """`reproduce --data natural` at the tiny scale on a small text folder: the natural family on
    the fresh seeds, every check a row (the unchanged #10 rule and the Argument-3 ablation checks
    included); bad combinations get one clear line."""
    import numpy as np

    from icl_lab.reproduce.natural import BOOST, natural_experiment

    text = tmp_path / "text"
    text.mkdir()
    words = np.random.default_rng(0).choice(["def", "return", "self", "value", "(", ")", ":", "\n    "], (20, 300))
    for i, doc in enumerate(words):
        (text / f"{i}.txt").write_text(" ".join(doc))
    result = reproduce(["all"], out=tmp_path / "out", scale="tiny", data="natural", corpus=str(text))
    assert [s.argument for s in result.sections] == ["argument-1", "argument-3"]
    metrics = [c.metric for c in result.checks]
    assert all(any(m.startswith(f"natural-2l-s{s}: ") for m in metrics) for s in (3, 4, 5))
    assert any(m.startswith("natural-1l-s3: ") for m in metrics) and not any("boost" in m for m in metrics)
    assert any("loss on the first copy minus the second" in m for m in metrics)
    assert any("prefix matching > 0.5 and copying > 0.5" in m for m in metrics)  # #10's rule, unchanged
    assert any("the induction head's share at the window's end minus at its start" in m for m in metrics)
    assert "natural text" in result.report.read_text()
    boosted = natural_experiment(BOOST, "default", 0)
    assert boosted.data.boost > 0 and "boost" in boosted.name and natural_experiment("natural-2l", "default", 0).data.boost == 0
    with pytest.raises(ConfigError, match="argument-2 needs synthetic data; --data natural runs argument-1 and argument-3"):
        reproduce(["2"], out=tmp_path / "out", scale="tiny", data="natural")
    with pytest.raises(ConfigError, match="--data natural runs at --scale default or tiny"):
        reproduce(["1"], out=tmp_path / "out", scale="paper", data="natural")
    with pytest.raises(ConfigError, match="--corpus applies to --data natural only"):
        reproduce(["1"], out=tmp_path / "out", scale="tiny", corpus=str(text))


def test_device_stays_out_of_the_runs_so_a_rerun_elsewhere_reuses_them(lab):
    """`reproduce --device` (issue #31): the family trained with the default device is the same
    family on an explicitly named one: nothing retrains, and the stored configs keep `auto`."""
    out, result, _ = lab
    lines = []
    again = reproduce(["argument-1"], out=out, scale="tiny", log=lines.append, device="cpu", dtype="fp32")
    assert not any(line.startswith("training") for line in lines), lines
    assert [(c.metric, c.passed) for c in again.checks] == [(c.metric, c.passed) for c in result.checks if c.argument == "argument-1"]
    assert all(ExperimentConfig.load(p).train.device == "auto" for p in Path(out).glob("*/config.json"))
