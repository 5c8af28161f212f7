"""`icl-lab grok` end to end on a tiny budget (p = 11, 20 full-batch steps): every checkpoint gets
its progress measures, the run its summary and report page, the CLI reuses the run, and bad input
is one line. Whether the preset groks is docs/grokking.md's business (minutes, not seconds)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.organisms.grokking import grok_experiment, run_grokking
from icl_lab.organisms.grokking.results import grokking_table as measure_table
from icl_lab.train.presets import get_preset

STEPS = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits for a busy core
    try:
        out = tmp_path_factory.mktemp("grok")
        lines = []
        yield out, run_grokking(p=11, frac=0.5, seed=1, out=out, steps=STEPS, log=lines.append), lines
    finally:
        torch.set_num_threads(threads)


def test_every_checkpoint_is_measured_and_summarised(tiny):
    _, result, lines = tiny
    s = result.summary
    assert s["p"] == 11 and s["step"] == STEPS and s["seed"] == s["split_seed"] == 1 and result.trained
    wide = measure_table(result.run)
    assert list(wide.step) == result.run.checkpoints
    for col in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "restricted_loss", "excluded_loss",
                "gini_embed", "gini_logit_map", "sum_squared_weights", "embed_norm.1", "embed_norm.5"):
        assert wide[col].notna().all(), col
    assert set(s["phases"]) >= {"memorisation", "circuit_formation", "cleanup", "test_loss_drop", "restricted_before_test", "rule"}
    assert s["grokked"] == (s["final"]["test_accuracy"] >= 0.99)
    assert len(s["circuit"]["neuron_best_freq"]) == result.run.config.model.d_mlp
    assert [line.split(" (")[0] for line in lines] == ["training p11-f0.5-wd1-s1", "measuring every checkpoint of p11-f0.5-wd1-s1",
                                                      "writing the report of p11-f0.5-wd1-s1"]


def test_the_report_page_has_every_section(tiny):
    _, result, _ = tiny
    page = result.report.read_text()
    for anchor in ("verdict", "curves", "progress", "spectrum", "neurons", "inputs"):
        assert f'id="{anchor}"' in page
    assert "p11-f0.5-wd1-s1: does not grok" in page or "p11-f0.5-wd1-s1: groks" in page
    assert "https://" not in page.split("<script>")[0]  # offline: nothing fetched


def test_cli_json_reuses_the_run_and_bad_input_is_one_line(tiny, monkeypatch, capsys):
    from icl_lab.cli import main

    out, result, _ = tiny
    cmd = [sys.executable, "-m", "icl_lab.cli", "grok", "--p", "11", "--frac", "0.5", "--seed", "1", "--steps", str(STEPS),
           "--out", str(out)]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["key_freqs"] == result.summary["key_freqs"] and set(record["phases"]) >= {"memorisation", "cleanup"}
    assert "training" not in r.stderr and "measuring" not in r.stderr
    monkeypatch.setattr(sys, "argv", ["icl-lab", "grok", "--p", "12"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "p=12 is even; use an odd modulus" in err and "Traceback" not in err


def test_the_preset_is_nanda_et_al_s_setup():
    cfg = get_preset("grokking-1l")
    m, t = cfg.model, cfg.train
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.act_fn, m.normalization, m.d_vocab, m.n_ctx) == \
        (1, 128, 4, 512, "relu", "none", 114, 4)
    # full batch: 30% of 113²
    assert (t.weight_decay, t.betas, t.batch_size, t.grad_clip, m.loss_dtype) == (1.0, (0.9, 0.98), 3831, 0.0, "fp64")
    assert t.lr == 3e-3  # three times Nanda et al.'s 1e-3: grokking at ~1.8k steps instead of ~14k (docs/grokking.md)
    assert cfg.data.kind == "modular" and cfg.data.modular.p == 113 and cfg.data.modular.frac == 0.3
    control = grok_experiment(seed=2, weight_decay=0.0)
    assert control.train.weight_decay == 0.0 and control.data.modular.split_seed == 2 and control.train.steps == t.steps
    with pytest.raises(ConfigError, match=r"data.modular.frac: Input should be less than 1"):
        grok_experiment(frac=1.5)


def test_a_run_trained_elsewhere_is_measured_in_place_and_train_points_there(tiny, capsys):
    from icl_lab.cli import _print_summary, console
    from icl_lab.organisms.grokking import measure_grokking

    _, result, _ = tiny
    again = measure_grokking(result.run.path)  # already measured since its last checkpoint: reused as it is
    assert again.summary == result.summary and not again.trained
    with console.capture() as captured:
        _print_summary(result.run, 1.0)  # what `icl-lab train --preset grokking-1l` prints at the end
    assert f"measure it with `icl-lab grok --run {result.run.path}`" in captured.get().replace("\n", "")


def test_device_and_dtype_reach_grok_and_stay_out_of_the_run(tiny, monkeypatch):
    """`icl-lab grok --device/--dtype` (issue #31): the same experiment on another device is the same
    run (reused, not retrained), and the measurements run where and in what precision they are asked."""
    import icl_lab.organisms.grokking.lab as lab

    out, result, _ = tiny
    seen = {}
    real = lab.evaluate_run
    monkeypatch.setattr(lab, "is_evaluated", lambda run: False)  # measure again, to see the arguments
    monkeypatch.setattr(lab, "evaluate_run", lambda run, progress, device, dtype: seen.update(device=device, dtype=dtype)
                        or real(run, progress, device=device, dtype=dtype))
    again = run_grokking(p=11, frac=0.5, seed=1, out=out, steps=STEPS, device="cpu", dtype="fp32")
    assert not again.trained and again.run.path == result.run.path
    assert seen == {"device": "cpu", "dtype": "fp32"}
    assert again.run.config.train.device == "auto"  # the stored config reproduces the run anywhere
