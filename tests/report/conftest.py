"""Two short real runs for the report tests: a 2-layer model that forms an induction head
(analysed and ablated) and a 1-layer control (analysed), side by side in one runs folder."""

import pytest

import icl_lab
from icl_lab.pipeline import ablate_run
from icl_lab.pipeline import analyze


@pytest.fixture(scope="package")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    two = icl_lab.train(icl_lab.get_preset("synthetic-2l").replace(train={"steps": 700, "n_checkpoints": 16}),
                        out=root / "demo" / "two")
    one = icl_lab.train(icl_lab.get_preset("synthetic-1l").replace(train={"steps": 200, "n_checkpoints": 8}),
                        out=root / "demo" / "one")
    analyze([two, one])
    ablate_run(two, kinds=("zero",))
    return root


@pytest.fixture(scope="package")
def two(runs_dir):
    return icl_lab.load_run(runs_dir / "demo" / "two")


@pytest.fixture(scope="package")
def one(runs_dir):
    return icl_lab.load_run(runs_dir / "demo" / "one")
