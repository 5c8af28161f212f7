"""`train.compile`: the training step through torch.compile (with the explicit masked softmax that
inductor fuses) follows the eager loss curve, resumes as the same run, and a machine without a
C++ compiler gets one line naming the fix."""

import shutil

import numpy as np
import pytest

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.train.schedule import lr_at
from icl_lab.train.config import TrainConfig

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")

CFG = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 80, "warmup_steps": 10, "n_checkpoints": 4, "log_every": 5})


def _train_outside_the_type_checker(cfg, out):
    """Train in a fresh process: the suite's run-time shape checks (jaxtyping + beartype) cannot
    read the fake tensors torch.compile traces with."""
    import subprocess
    import sys

    cfg_file = out.parent / f"{out.name}.json"
    cfg_file.write_text(cfg.model_dump_json())
    code = f"import icl_lab; icl_lab.train(icl_lab.ExperimentConfig.load({str(cfg_file)!r}), out={str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    return icl_lab.load_run(out)


def test_compiled_training_follows_the_eager_loss_curve(tmp_path):
    eager = icl_lab.train(CFG, out=tmp_path / "eager").log
    compiled = _train_outside_the_type_checker(CFG.replace(train={"compile": True}), tmp_path / "compiled").log
    assert list(eager.step) == list(compiled.step)
    # same maths, other kernels: float32 rounding grows over 80 AdamW steps, but stays far below the curve's own change
    assert np.allclose(eager.loss, compiled.loss, atol=2e-3), np.abs(eager.loss - compiled.loss).max()
    assert eager.loss.iloc[0] - eager.loss.iloc[-1] > 0.03  # 15x the tolerance: the curve moves


def test_compile_does_not_change_which_run_it_is(tmp_path):
    assert CFG.same_run(CFG.replace(train={"compile": True}))
    icl_lab.train(CFG.replace(train={"steps": 40}), out=tmp_path / "r")
    assert icl_lab.load_run(tmp_path / "r").checkpoints


def test_no_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="train.compile needs a C\\+\\+ compiler .* --no-compile"):
        icl_lab.train(CFG.replace(train={"compile": True}), out=tmp_path / "r")


def test_wsd_holds_then_decays_linearly_over_the_last_share():
    tc = TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, schedule="wsd", decay_share=0.2, min_lr_ratio=0.1)
    assert lr_at(50, tc) == pytest.approx(1e-3 * 51 / 100)
    assert lr_at(500, tc) == lr_at(799, tc) == 1e-3
    assert lr_at(900, tc) == pytest.approx(1e-3 * (1 - 0.9 * 0.5))
    assert lr_at(1000, tc) == pytest.approx(1e-4)
