"""The shared stream base: one fingerprint convention, and the fingerprints of runs trained before
the organisms moved still match (decision 30); organisms' config sections in `DataConfig`."""

import pytest
import torch

from icl_lab.data import DataConfig, SyntheticStream, open_stream
from icl_lab.errors import ConfigError
from icl_lab.organisms.grokking import ModularConfig
from icl_lab.organisms.oocr import OOCRConfig
from icl_lab.train.config import ExperimentConfig


@pytest.mark.parametrize("kind, expected", [
    ("repeated", "sha256:06b6c9489475e838f2b77136e80513bd"),
    ("uniform", "sha256:782c8bf425876e55331afa08bc1b6135"),
    ("mixture", "sha256:0d0f86d7161b445556bee65968827ee3"),
])
def test_synthetic_fingerprints_are_unchanged(kind, expected):
    # values computed with icl-lab before the organisms moved out of DataConfig
    assert SyntheticStream(DataConfig(kind=kind), 128, 64, 32, 5).fingerprint(5) == expected


def test_oocr_fingerprint_is_unchanged():
    stream = open_stream(DataConfig(kind="oocr", oocr=OOCRConfig(n_items=20)), 200, 8, 16, 3)
    assert stream.fingerprint(3) == "sha256:98009704eb9f7f6389d025788a454339"


def test_modular_fingerprint_changed_once_and_the_old_one_is_accepted():
    stream = open_stream(DataConfig(kind="modular", modular=ModularConfig(p=7, frac=0.5)), 8, 4, 24, 3)
    old = "sha256:fd3ebcaab3a1a51367aafe62bee6c6ac"  # field-order JSON, before the shared base
    assert stream.fingerprint(3) != old and stream.legacy_fingerprints(3) == (old,)


def test_state_round_trip_resumes_the_stream():
    stream = open_stream(DataConfig(kind="oocr", oocr=OOCRConfig(n_items=20)), 200, 8, 16, 3)
    state = stream.get_state()
    first = stream.next().tokens
    stream.set_state(state)
    assert torch.equal(stream.next().tokens, first)


def test_sections_parse_fill_and_drop():
    assert DataConfig(kind="oocr").oocr == OOCRConfig()  # filled with the defaults
    legacy = DataConfig.parse({"kind": "repeated", "oocr": OOCRConfig().model_dump(), "modular": ModularConfig().model_dump()})
    assert legacy == DataConfig()  # configs written before the move carry every section at its defaults
    cfg = DataConfig(kind="modular", modular={"p": 7})
    assert cfg.modular.p == 7 and DataConfig.parse(cfg.model_dump()) == cfg


@pytest.mark.parametrize("data, match", [
    ({"kind": "markovv"}, "unknown data kind 'markovv'"),
    ({"kind": "repeated", "oocr": {"phi": 3.0}}, "oocr: applies to data.kind=oocr runs only"),
    ({"kind": "oocr", "oocr": {"phi": -1}}, r"oocr.phi: Input should be greater than 0"),
    ({"kind": "repeated", "nonsense": 1}, "nonsense: unknown field"),
])
def test_bad_sections_fail_in_one_line(data, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig.parse(data)


def test_experiment_replace_merges_a_section():
    cfg = ExperimentConfig.parse({"model": {"d_vocab": 8, "n_ctx": 4, "n_layers": 1, "d_model": 8, "n_heads": 1},
                                  "data": {"kind": "modular", "modular": {"p": 7}}, "train": {"steps": 2, "warmup_steps": 0}})
    assert cfg.replace(data={"modular": {"frac": 0.5}}).data.modular == ModularConfig(p=7, frac=0.5)
