"""`icl-lab oocr` end to end on the reversal task, shortened: the reversal curse shows within a
few hundred steps (trained facts learned, the untrained direction not, the in-context control
solved), and the run gets its scores, analysis and report."""

import json
import subprocess
import sys

import pytest

from icl_lab.errors import ConfigError
from icl_lab.organisms.oocr import TASKS, run_task, task_experiment

STEPS = 200


@pytest.fixture(scope="module")
def reversal(tmp_path_factory):
    out = tmp_path_factory.mktemp("oocr")
    lines = []
    return out, run_task("reversal", out=out, steps=STEPS, log=lines.append), lines


def test_the_reversal_curse_shows(reversal):
    _, result, lines = reversal
    s = result.summary
    assert s["task"] == "reversal" and s["step"] == STEPS
    assert s["splits"]["trained"] > 0.95 and s["splits"]["trained_reverse"] > 0.95
    assert s["splits"]["held_out"] <= 5 * s["chance"]  # never trained in this direction: near chance
    assert s["splits"]["in_context"] > 0.5  # the same fact, given in context, is reversed
    assert any(line.startswith("training reversal-s0") for line in lines)


def test_the_run_holds_scores_analysis_and_report(reversal):
    _, result, _ = reversal
    table = result.run.metrics()
    steps = set(table[table.metric == "oocr.accuracy.held_out"].step)
    assert steps == set(result.run.checkpoints)
    circuits = result.summary["circuits"]
    assert set(circuits) == {"trained", "trained_reverse", "held_out", "in_context"}
    lens = circuits["trained"]["answer_lens"]
    assert len(lens) == result.run.config.model.n_layers + 1 and lens[-1][-1] > 0.95  # the output layer's answer
    page = result.report.read_text()
    assert 'id="oocr-reversal-s0"' in page and "reversal-s0 (reversal): trained 100%" in page


def test_cli_json_reuses_the_run_and_bad_input_is_one_line(reversal):
    out, result, _ = reversal
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "oocr", "reversal", "--out", str(out), "--steps", str(STEPS), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["task"] == "reversal" and record["splits"] == result.summary["splits"] and record["chance"] == 0.005
    assert "training" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "icl_lab.cli", "oocr", "reversal-curse"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown task 'reversal-curse'" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "icl_lab.cli", "analyze", str(result.run.path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "score it with `icl-lab oocr`" in bad.stderr


def test_every_task_has_a_valid_default_experiment():
    for task in TASKS:
        cfg = task_experiment(task, seed=2, weight_decay=0.05)
        assert cfg.data.oocr.task == task and cfg.seed == 2 and cfg.train.weight_decay == 0.05
    with pytest.raises(ConfigError, match="unknown task"):
        task_experiment("three-hop")
