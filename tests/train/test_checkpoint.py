"""Checkpoints carry a sha256 of their content, checked on every load: a damaged file is refused
with a one-line error, never half-used; checkpoints written before hashes still load."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from icl_lab.errors import CheckpointError, CorruptFileError
from icl_lab.model import Transformer
from icl_lab.train.checkpoint import (FORMAT, HASH_KEY, checkpoint_problem, content_hash, load_train_state, load_weights,
                                      save_checkpoint, save_weights)
from icl_lab.train.trainer import build_optimizer
from icl_lab.train.config import TrainConfig
from tests.conftest import tiny_config


@pytest.fixture
def saved(tmp_path):
    model = Transformer(tiny_config(), seed=0)
    opt = build_optimizer(model, TrainConfig(steps=2))
    model.per_token_loss(torch.randint(0, 50, (2, 24))).mean().backward()
    opt.step()
    path = tmp_path / "step_0000001.safetensors"
    save_checkpoint(path, model, opt, torch.Generator().manual_seed(1).get_state(), step=1, tokens=48)
    return path, model


def test_the_hash_covers_tensors_and_header_and_is_checked_on_load(saved):
    path, model = saved
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == FORMAT and meta[HASH_KEY] == content_hash(tensors, meta)
    assert len(meta[HASH_KEY]) == 64
    weights = load_weights(path)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert load_train_state(path).step == 1 and checkpoint_problem(path) is None


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_flipped_bit_is_refused(saved, where):
    path, _ = saved
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if where == "data":
        data[header + 100] ^= 0x01
    else:  # inside the stored step number: still valid JSON, a different checkpoint
        at = data.index(b'"step":"1"') + len('"step":"')
        data[at] = ord("2")
    path.write_bytes(bytes(data))
    msg = r"^checkpoint step_0000001.safetensors is truncated or corrupt \(content hash mismatch\); delete it and rerun with --resume$"
    with pytest.raises(CorruptFileError, match=msg):
        load_weights(path)
    with pytest.raises(CorruptFileError, match=msg):
        load_train_state(path)
    assert "content hash mismatch" in checkpoint_problem(path)


def test_truncated_and_empty_files_are_one_line_errors(saved):
    path, _ = saved
    whole = path.read_bytes()
    for size in (0, 5, 200, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:size])
        with pytest.raises(CorruptFileError, match=r"^checkpoint step_0000001.safetensors is truncated or corrupt \(") as info:
            load_weights(path)
        assert "\n" not in str(info.value)


def test_a_hash_less_v2_checkpoint_is_refused_but_v1_loads(saved, tmp_path):
    path, model = saved
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    stripped = {k: v for k, v in meta.items() if k != HASH_KEY}
    save_file(tensors, str(path), metadata=stripped)
    with pytest.raises(CorruptFileError, match=r"\(its content hash is missing\)"):
        load_weights(path)
    old = tmp_path / "old.safetensors"  # as the trainer wrote them before content hashes
    save_file(tensors, str(old), metadata={**stripped, "format": "icl-lab-checkpoint-v1"})
    assert all(torch.equal(load_weights(old)[k], v) for k, v in model.state_dict().items())
    assert load_train_state(old).tokens == 48


def test_weights_only_checkpoints_are_hashed_and_not_resumable(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, Transformer(tiny_config(), seed=0), step=3, source="x")
    assert checkpoint_problem(path) is None
    with pytest.raises(CheckpointError, match="holds weights only"):
        load_train_state(path)


def test_other_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match=r"^x.safetensors is not an icl-lab checkpoint"):
        load_weights(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_the_hash_ignores_header_key_order():
    t = {"a": torch.arange(3.0), "b": torch.ones(2, 2, dtype=torch.bfloat16)}
    assert content_hash(t, {"x": "1", "y": "2"}) == content_hash(dict(reversed(t.items())), {"y": "2", "x": "1"})
    assert content_hash(t, {"x": "1"}) != content_hash(t, {"x": "2"})
    assert content_hash(t, {}) != content_hash({"a": t["a"], "b": t["b"].float()}, {})  # dtype counts
    assert json.dumps(content_hash(t, {}))  # a plain hex string
