"""`icl-lab markov` end to end on a tiny budget (30 steps): every checkpoint measured, the stages
as step ranges, the report section, the CLI's JSON; the core refuses to `analyze` such a run."""

import json
import subprocess
import sys

import pytest

from icl_lab.errors import ConfigError
from icl_lab.organisms.markov import run_markov
from icl_lab.pipeline import analyze
from icl_lab.run import load_run

STEPS = 30


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("markov")
    return out, run_markov(seed=1, out=out, steps=STEPS)


def test_every_checkpoint_has_a_stage(result):
    _, r = result
    s = r.summary
    assert s["stages"][0]["start"] == r.run.checkpoints[0] and s["stages"][-1]["end"] == r.run.checkpoints[-1]
    assert {st["stage"] for st in s["stages"]} <= {"uniform", "unigram", "bigram"}
    assert s["stages"][0]["stage"] == "uniform"  # an untrained model predicts nearly uniformly
    table = r.run.store.read(["step", "metric"])
    assert set(table[table.metric == "markov.kl.bigram"].step) == set(r.run.checkpoints)
    assert 0 <= s["sih"]["score"] <= 1 and 0 < s["sih"]["chance"] < 1


def test_report_has_the_section(result):
    _, r = result
    page = r.report.read_text()
    assert "In-context Markov chains" in page and "statistical induction head" in page


def test_analyze_refuses_and_points_to_markov(result):
    _, r = result
    with pytest.raises(ConfigError, match="measure it with `icl-lab markov"):
        analyze([load_run(r.run.path)])


def test_cli_json_reuses_the_run(result):
    out, r = result
    done = subprocess.run([sys.executable, "-m", "icl_lab.cli", "markov", str(r.run.path), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (rec,) = json.loads(done.stdout)
    assert rec["run"] == str(r.run.path) and rec["stages"] == r.summary["stages"]
