"""Modular addition: `a b = c` with the answer the only target, a seeded split of every pair."""

import pytest
import torch

from icl_lab.data import DataConfig, open_stream
from icl_lab.organisms.grokking.task import ModularConfig, build_split, sequences, train_size
from icl_lab.errors import ConfigError, DataError
from icl_lab.train.config import ExperimentConfig


def test_the_split_covers_every_pair_once_and_is_seeded():
    cfg = ModularConfig(p=11, frac=0.3, split_seed=4)
    task = build_split(cfg)
    assert task.n_train == train_size(cfg) == round(0.3 * 121) and int(task.is_train.sum()) == task.n_train
    train_pairs = {tuple(r) for r in task.train[:, :2].tolist()}
    assert train_pairs == {tuple(r) for r in task.pairs[task.is_train].tolist()}  # train rows are the marked pairs
    assert (task.train[:, 2] == 11).all() and (task.train[:, 3] == (task.train[:, 0] + task.train[:, 1]) % 11).all()
    assert torch.equal(build_split(ModularConfig(p=11, frac=0.3, split_seed=4)).is_train, task.is_train)
    assert not torch.equal(build_split(ModularConfig(p=11, frac=0.3, split_seed=5)).is_train, task.is_train)


def test_full_batch_stream_yields_the_whole_training_set_with_only_the_answer_as_target():
    cfg = DataConfig(kind="modular", modular=ModularConfig(p=7, frac=0.5))
    n = train_size(cfg.modular)
    batch = open_stream(cfg, d_vocab=8, n_ctx=4, batch_size=n, seed=0).next()
    assert batch.tokens.shape == (n, 4) and torch.equal(batch.tokens, build_split(cfg.modular).train)
    assert batch.loss_mask.shape == (n, 3) and batch.loss_mask[:, 2].all() and not batch.loss_mask[:, :2].any()
    small = open_stream(cfg, d_vocab=8, n_ctx=4, batch_size=5, seed=0).next()  # a sample of the training pairs
    assert small.tokens.shape == (5, 4) and {tuple(r) for r in small.tokens.tolist()} <= {tuple(r) for r in batch.tokens.tolist()}


def test_sequences_put_the_sum_after_the_equals_token():
    assert sequences(torch.tensor([[3, 6], [0, 0]]), 7).tolist() == [[3, 6, 7, 2], [0, 0, 7, 0]]


def test_bad_shapes_and_batches_fail_with_the_fix():
    with pytest.raises(ConfigError, match=r"modular addition mod 113 needs d_vocab >= 114 \(the numbers and `=`\); raise model.d_vocab"):
        ExperimentConfig.parse(dict(model=dict(n_layers=1, d_model=8, n_heads=1, d_vocab=100, n_ctx=4),
                                    data=dict(kind="modular"), train=dict(steps=1, warmup_steps=0)))
    cfg = DataConfig(kind="modular", modular=ModularConfig(p=7, frac=0.5))
    with pytest.raises(DataError, match=r"^train.batch_size=100 exceeds the 24 training pairs; set it to 24 for full-batch training$"):
        open_stream(cfg, d_vocab=8, n_ctx=4, batch_size=100, seed=0)
    with pytest.raises(ValueError, match=r"p=8 is even; use an odd modulus"):
        ModularConfig(p=8)
