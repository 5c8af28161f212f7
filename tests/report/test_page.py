"""The report file: self-contained, with every section, and clear errors for bad input."""

import html
import json
import re
import subprocess
import sys

import pytest

from icl_lab.errors import ConfigError
from icl_lab.report import default_out, write_report


@pytest.fixture(scope="module")
def report(two, one, tmp_path_factory):
    return write_report([two.path, one.path], out=tmp_path_factory.mktemp("rep") / "report.html")


def _payload(text: str) -> dict:
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(block)


def test_report_is_one_offline_file_with_every_section(report):
    text = report.path.read_text()
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=", text)  # nothing to fetch
    assert "Plotly" in text and len(text) > 3_000_000  # plotly.js is inlined
    for anchor in ("verdict", "loss", "position", "pca", "mat", "attention", "composition"):
        assert f'id="{anchor}"' in text or f"id={anchor} " in text, anchor
    payload = _payload(text)
    assert set(payload["figures"]) == {"fig-loss", "fig-position", "fig-pca", "fig-mat", "fig-composition"}
    assert all(fig["data"] for fig in payload["figures"].values())
    assert [a["name"] for a in payload["attention"]] == ["two", "one"]
    assert payload["attention"][0]["induction"] == [[1, 0]]
    assert "L1H0 *" in text  # the induction head is starred in the Model Analysis Table


def test_phase_window_is_shaded(report, two):
    shapes = _payload(report.path.read_text())["figures"]["fig-loss"]["layout"]["shapes"]
    pc = two.summary()["phase_change"]
    assert [(s["x0"], s["x1"]) for s in shapes] == [(pc["start_tokens"], pc["end_tokens"])]


def test_verdict_reaches_the_page_and_the_cli(report, two, one, tmp_path):
    assert report.verdict[0].startswith("Phase change: two at ") and "one none" in report.verdict[0]
    assert all(html.escape(line) in report.path.read_text() for line in report.verdict)
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "report", str(two.path), "--out", str(tmp_path / "x.html")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "x.html" in r.stdout and "Induction heads: two L1H0" in r.stdout


def test_unanalysed_run_gets_loss_and_the_commands_that_fill_the_gaps(tmp_path):
    import icl_lab

    cfg = icl_lab.get_preset("synthetic-1l").replace(train={"steps": 20, "warmup_steps": 5, "n_checkpoints": 4})
    run = icl_lab.train(cfg, out=tmp_path / "r")
    rep = write_report([run.path])
    assert rep.path == run.path / "report.html"
    page = rep.path.read_text()
    payload = _payload(page)
    assert set(payload["figures"]) == {"fig-loss"} and payload["attention"] == []
    assert "not analysed yet" in rep.verdict[0] and f"icl-lab analyze {run.path}" in page
    # one measurement fills one gap: the viewer, without the rest of the analysis
    icl_lab.analyze([run], n_examples=16, only=["attention_viewer"])
    payload = _payload(write_report([run.path]).path.read_text())
    assert payload["attention"][0]["steps"] == run.checkpoints and not run.store.exists()


def test_bad_input_is_one_clear_line(two, tmp_path):
    with pytest.raises(ConfigError, match=r"should end in \.html"):
        write_report([two.path], out=tmp_path / "report.pdf")
    with pytest.raises(ConfigError, match="at least one run"):
        write_report([])
    r = subprocess.run([sys.executable, "-m", "icl_lab.cli", "report", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_default_out(tmp_path):
    assert default_out([tmp_path / "a"]) == tmp_path / "a" / "report.html"
    assert default_out([tmp_path / "x" / "a", tmp_path / "x" / "b"]) == (tmp_path / "x").resolve() / "report.html"
