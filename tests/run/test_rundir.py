import json
from pathlib import Path

import pytest
import torch

import icl_lab
from icl_lab.data import load_tokens
from icl_lab.errors import CheckpointError, DataError
from icl_lab.run import check_eval_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 40, "n_checkpoints": 10, "warmup_steps": 5})
    return icl_lab.train(cfg, out=tmp_path_factory.mktemp("runs") / "r")


def test_load_run_exposes_config_checkpoints_models_and_log(run):
    again = icl_lab.load_run(run.path)
    assert again.config == run.config
    assert again.checkpoints[0] == 0 and again.checkpoints[-1] == 40
    m0, m40 = again.model(step=0), again.model()
    assert not torch.equal(m0.W_E, m40.W_E)
    assert not m40.training
    log = again.log
    assert log.step.iloc[-1] == 40 and (log.tokens == log.step * 32 * 64).all()
    assert log.loss_repeat.notna().all()


def test_missing_checkpoint_names_the_nearest(run):
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 39 in r; nearest: \["):
        run.model(step=39)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        icl_lab.load_run(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        icl_lab.load_run(tmp_path)


def test_truncated_checkpoint_is_a_clear_error(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    ckpt = copy / "checkpoints" / "step_0000040.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step_0000040.safetensors is truncated or corrupt .*rerun with --resume"):
        icl_lab.load_run(copy).model()



@pytest.fixture
def text_run(tmp_path):
    import numpy as np

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    gen = np.random.default_rng(0)
    for i in range(20):
        (corpus / f"{i}.txt").write_text(" ".join(gen.choice(["alpha", "beta", "gamma", "delta"], 200)))
    cfg = icl_lab.ExperimentConfig.parse(dict(
        name="text", model=dict(n_layers=1, d_model=16, n_heads=1, d_vocab=256, n_ctx=16),
        data=dict(kind="text", corpus=str(corpus), tokenizer="byte", bos_id=0),
        train=dict(steps=4, batch_size=2, warmup_steps=1, n_checkpoints=2)))
    return icl_lab.train(cfg, out=tmp_path / "run")


def _edit(path, data: bool = True, **changes) -> None:
    """Change fields of a run's config.json ("data" part) or meta.json (data=False)."""
    doc = json.loads(path.read_text())
    (doc["data"] if data else doc).update(changes)
    path.write_text(json.dumps(doc))


def _check(run) -> None:
    check_eval_data(icl_lab.load_run(run.path))  # reopened: Run caches its config


def test_check_eval_data_passes_on_the_runs_own_text(text_run, run):
    assert text_run.meta["bos_id"] == 0 and text_run.meta["tokenizer_fingerprint"].startswith("sha256:")
    check_eval_data(text_run)
    check_eval_data(run)  # synthetic: nothing to compare


def test_check_eval_data_names_a_changed_bos_tokenizer_or_corpus(text_run):
    config, meta, recorded = text_run.layout.config, text_run.layout.meta, text_run.meta
    _edit(config, prepend_bos=False)
    with pytest.raises(DataError, match=r"^run was trained on windows starting with token 0 but would be evaluated on windows "
                                        r"with no BOS; set data.bos_id to 0 and data.prepend_bos to true in its config.json$"):
        _check(text_run)
    # a run trained before BOS existed: meta.json has only the token arrays' fingerprint
    _edit(config, prepend_bos=True)
    old = {k: v for k, v in recorded.items() if k not in ("bos_id", "tokenizer_fingerprint")}
    meta.write_text(json.dumps({**old, "data_fingerprint": load_tokens(text_run.config.data, 256).fingerprint}))
    with pytest.raises(DataError, match=r"^run was trained on windows with no BOS but would be evaluated on windows starting "
                                        r"with token 0; set data.prepend_bos to false in its config.json$"):
        _check(text_run)
    _edit(config, prepend_bos=False)
    _check(text_run)  # the old run, fixed as the message says
    # another tokenizer: the fix points at the tokenizer saved with the run
    meta.write_text(json.dumps(recorded))
    _edit(config, prepend_bos=True, tokenizer="char")
    with pytest.raises(DataError, match=r"^run was made with tokenizer sha256:\w+ but data.tokenizer='char' gives sha256:\w+; "
                                        r"set data.tokenizer_file in its config.json to .*/run/tokenizer.json$"):
        _check(text_run)
    # the corpus edited since training
    _edit(config, tokenizer="byte")
    (Path(text_run.config.data.corpus) / "more.txt").write_text("epsilon " * 500)
    with pytest.raises(DataError, match=r"^run's evaluation text differs from its training text \(data fingerprint sha256:\w+, "
                                        r"recorded sha256:\w+\): corpus '.*corpus' changed; restore it or train the run again$"):
        _check(text_run)
