"""The CLI end to end: a short run, its summary, resume of a finished run, info and rerun."""

import json
import subprocess
import sys

import torch

import icl_lab


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "icl_lab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_train_resume_info_and_exact_rerun(tmp_path):
    r = cli("train", "--preset", "synthetic-2l", "--steps", "30", "--seed", "3", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "loss on repeats" in r.stdout and "best prefix-matching head: L" in r.stdout
    run = icl_lab.load_run(tmp_path / "run")
    assert run.config.seed == 3 and run.config.train.steps == 30 and run.meta["status"] == "complete"

    again = cli("train", "--resume", "--out", "run", cwd=tmp_path)  # finished: nothing to redo
    assert again.returncode == 0, again.stderr
    assert icl_lab.load_run(tmp_path / "run").checkpoints == run.checkpoints

    info = cli("info", "run", cwd=tmp_path)
    assert info.returncode == 0 and '"seed": 3' in info.stdout and "checkpoints" in info.stdout

    rerun = cli("train", "--config", "run", "--out", "rerun", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    a, b = run.model(), icl_lab.load_run(tmp_path / "rerun").model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert json.loads((tmp_path / "rerun" / "config.json").read_text()) == json.loads((tmp_path / "run" / "config.json").read_text())


def test_presets_lists_every_preset(tmp_path):
    r = cli("presets", cwd=tmp_path)
    assert r.returncode == 0
    for name in icl_lab.preset_names():
        assert name in r.stdout


def test_train_on_your_own_text(tmp_path):
    (tmp_path / "texts").mkdir()
    for i in range(12):
        (tmp_path / "texts" / f"{i}.txt").write_text(f"the {i} quick brown fox jumps over the lazy dog. " * 40)
    r = cli("train", "--preset", "synthetic-1l", "--steps", "40", "--data", "texts", "--tokenizer", "byte", "--out", "run", cwd=tmp_path)
    assert r.returncode == 1 and "the byte tokenizer has 256 tokens but model.d_vocab=128" in r.stderr
    model = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_vocab": 256, "n_ctx": 32}
    (tmp_path / "cfg.json").write_text(json.dumps({"name": "mine", "model": model, "data": {"kind": "text", "tokenizer": "byte"},
                                                   "train": {"steps": 30, "warmup_steps": 5}}))
    r = cli("train", "--config", "cfg.json", "--data", "texts", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = icl_lab.load_run(tmp_path / "run")
    assert run.config.data.corpus == str((tmp_path / "texts").resolve()) and run.tokenizer().decode([116, 104, 101]) == "the"
    bad = cli("train", "--config", "cfg.json", "--data", "nowhere", "--out", "run2", cwd=tmp_path)
    assert bad.returncode == 1 and "nowhere not found" in bad.stderr and "Traceback" not in bad.stderr
