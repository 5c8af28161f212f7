import json

import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.run import load_run
from icl_lab.train import ExperimentConfig
from icl_lab.train.checkpoint import load_train_state, load_weights
from icl_lab.train.trainer import fit


def small_experiment(steps=40, **train) -> ExperimentConfig:
    return ExperimentConfig.parse(
        dict(
            name="tiny", seed=5,
            model=dict(n_layers=2, d_model=32, n_heads=2, d_vocab=40, n_ctx=32, normalization="layernorm", d_mlp=32),
            data=dict(max_period=8, max_offset=4),
            train=dict(steps=steps, batch_size=4, lr=3e-3, warmup_steps=5, schedule="cosine", n_checkpoints=12,
                       log_every=5, **train),
        )
    )


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(tmp_path):
    cfg = small_experiment()
    straight = load_run(fit(cfg, tmp_path / "straight"))

    def stop_at_half(step, total, rec):
        if step == 23:  # between checkpoints: resume must replay from the last one
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "resumed", progress=stop_at_half)
    part = load_run(tmp_path / "resumed")
    assert part.checkpoints[-1] < 23 and part.meta["status"] == "stopped" and part.meta["stop_reason"] == "Interrupt"
    fit(cfg, tmp_path / "resumed", resume=True)
    resumed = load_run(tmp_path / "resumed")

    assert straight.checkpoints == resumed.checkpoints
    for step in (straight.checkpoints[-1], 27):
        a, b = load_weights(straight.layout.checkpoint(step)), load_weights(resumed.layout.checkpoint(step))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ at step {step}"
    sa = load_train_state(straight.layout.checkpoint(40)).optimizer["state"]
    sb = load_train_state(resumed.layout.checkpoint(40)).optimizer["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    # the log is continuous: no duplicated or missing steps after the resume
    assert straight.log.step.tolist() == resumed.log.step.tolist()
    assert straight.log.loss.tolist() == resumed.log.loss.tolist()
    assert resumed.meta["status"] == "complete"


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = small_experiment(steps=5)
    fit(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        fit(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        fit(small_experiment(steps=6), tmp_path / "run", resume=True)


def test_run_directory_records_everything_needed_to_rerun(tmp_path):
    cfg = small_experiment(steps=10)
    run = load_run(fit(cfg, tmp_path / "run"))
    assert ExperimentConfig.load(run.path) == cfg
    meta = run.meta
    assert meta["seed"] == 5 and meta["data_fingerprint"].startswith("sha256:")
    assert {"torch", "python", "icl-lab"} <= set(meta["versions"])
    rerun = load_run(fit(ExperimentConfig.load(run.path), tmp_path / "rerun"))
    assert torch.equal(run.model().W_E, rerun.model().W_E)
    assert run.checkpoints[0] == 0 and run.checkpoints[-1] == 10
    assert list(run.log.columns[:6]) == ["step", "tokens", "loss", "loss_repeat", "lr", "tokens_per_s"]


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    from icl_lab.errors import NonFiniteError
    from icl_lab.model import Transformer

    real = Transformer.per_token_loss

    def poisoned(self, tokens):
        return real(self, tokens) * float("nan")

    monkeypatch.setattr(Transformer, "per_token_loss", poisoned)
    with pytest.raises(NonFiniteError, match=r"loss became nan by step 1; lower train.lr"):
        fit(small_experiment(steps=10), tmp_path / "nan")
    meta = load_run(tmp_path / "nan").meta  # the run directory says why it stopped
    assert meta["status"] == "stopped" and meta["stop_reason"].startswith("NonFiniteError: loss became nan by step 1")


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    cfg = small_experiment(steps=5)
    run = fit(cfg, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    stamps = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    fit(cfg, run, resume=True)
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # meta.json still records the machine and versions that trained it
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps


def test_resuming_on_other_data_is_refused_before_anything_is_written(tmp_path):
    cfg = small_experiment(steps=20)

    def stop(step, total, rec):
        if step == 12:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "run", progress=stop)
    meta_path = tmp_path / "run" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "data_fingerprint": "sha256:" + "0" * 32}))  # as if the data had changed
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"run was trained on other data \(corpus, tokenizer or BOS changed since, "
                                          r"fingerprint sha256:0+ -> sha256:\w+\); restore them or start a new run with another --out$"):
        fit(cfg, tmp_path / "run", resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_a_run_resumes_on_another_device_setting_as_the_same_run(tmp_path):
    """`train.device` is where a run trains, not which run it is: resuming with another device
    setting continues it (and config.json keeps what it was started with)."""
    cfg = small_experiment(steps=20)
    straight = load_run(fit(cfg, tmp_path / "straight"))

    def stop(step, total, rec):
        if step == 9:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "moved", progress=stop)
    moved = cfg.replace(train={"device": "cpu"})
    assert moved != cfg and moved.same_run(cfg) and not moved.same_run(cfg.replace(seed=6))
    fit(moved, tmp_path / "moved", resume=True)
    run = load_run(tmp_path / "moved")
    assert run.config.train.device == "auto" and run.meta["status"] == "complete"
    a, b = load_weights(straight.layout.checkpoint(20)), load_weights(run.layout.checkpoint(20))
    assert all(torch.equal(a[k], b[k]) for k in a)
