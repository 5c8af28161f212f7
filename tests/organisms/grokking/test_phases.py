"""The phase rules on synthetic progress-measure curves with known phase boundaries."""

import numpy as np
import pandas as pd

from icl_lab.organisms.grokking.phases import drop, find_phases

STEPS = np.unique(np.round(np.concatenate([np.logspace(0, np.log10(20000), 80), np.linspace(0, 20000, 81)])).astype(int))


def step_sigmoid(center: float, width: float = 300.0) -> np.ndarray:
    return 1 / (1 + np.exp(-(STEPS - center) / width))


def nanda_like() -> pd.DataFrame:
    """Memorisation until ~1,000 (train and excluded loss fall), circuit formation until ~6,000
    (excluded loss rises, restricted loss falls from ~4,000), cleanup ~8,000-10,000 (test loss and
    weight norm fall)."""
    train = 10 ** (0.7 - 7 * step_sigmoid(500, 120))
    excluded = 10 ** (0.7 - 7 * step_sigmoid(500, 120) + 6.5 * step_sigmoid(3500, 700))
    restricted = 10 ** (1.2 - 7 * step_sigmoid(6000, 800))
    test = 10 ** (0.7 + 0.8 * step_sigmoid(600, 150) - 8 * step_sigmoid(9000, 400))
    weights = 3000 - 1000 * step_sigmoid(4000, 1000) - 1200 * step_sigmoid(9000, 400)
    return pd.DataFrame({"step": STEPS, "train_loss": train, "train_accuracy": step_sigmoid(300, 40), "excluded_loss": excluded,
                         "restricted_loss": restricted, "test_loss": test, "sum_squared_weights": weights})


def test_a_drop_is_found_on_log_loss_and_a_flat_loss_has_none():
    d = drop(STEPS, 10 ** (1 - 5 * step_sigmoid(9000, 300)))
    assert 8000 < d["start"] < d["mid"] < d["end"] < 10000 and abs(d["mid"] - 9000) < 300 and d["decades"] > 4.9
    assert drop(STEPS, np.full(len(STEPS), 3.0) + 0.1 * np.sin(STEPS)) is None


def test_the_three_phases_of_a_nanda_like_run():
    ph = find_phases(nanda_like())
    mem, circuit, clean = ph["memorisation"], ph["circuit_formation"], ph["cleanup"]
    assert mem["start"] == 0 and 500 < mem["end"] < 2000
    assert circuit["start"] == mem["end"] and 4000 < circuit["end"] < 7000
    assert clean["start"] == circuit["end"] and 9000 < clean["end"] < 11000
    assert ph["test_loss_drop"]["phase_start"] == ph["test_loss_drop"]["phase_end"] == "cleanup"
    assert 8500 < ph["test_loss_drop"]["mid"] < 9500 and ph["restricted_loss_drop"]["phase_start"] == "circuit_formation"
    assert ph["restricted_loss_drop"]["mid"] < ph["test_loss_drop"]["mid"] and ph["restricted_before_test"]


def test_memorisation_lasts_until_the_training_set_is_memorised():
    """Some seeds use the final circuit early: the excluded loss turns up before train accuracy is 99%."""
    t = nanda_like()
    t["train_accuracy"] = step_sigmoid(1500, 40)
    ph = find_phases(t)
    assert 1600 < ph["memorisation"]["end"] < 1800 and ph["circuit_formation"]["start"] == ph["memorisation"]["end"]


def test_no_phases_without_a_circuit():
    """wd = 0: the train loss falls, the excluded loss with it and never rises, the test loss stays up."""
    t = nanda_like()
    t["excluded_loss"] = t["train_loss"]
    t["test_loss"] = 10 ** (0.7 + 0.8 * step_sigmoid(600, 150))
    t["restricted_loss"] = np.full(len(STEPS), 5.0)
    ph = find_phases(t)
    assert ph["memorisation"] is None and ph["cleanup"] is None and ph["test_loss_drop"] is None
    assert not ph["restricted_before_test"]


def _nanda_like_on(steps: np.ndarray) -> pd.DataFrame:
    s = lambda c, w: 1 / (1 + np.exp(-(steps - c) / w))  # noqa: E731
    train = 10 ** (0.7 - 7 * s(500, 120))
    excluded = 10 ** (0.7 - 7 * s(500, 120) + 6.5 * s(3500, 700))
    weights = (3000 - 1000 * s(4000, 1000) - 1200 * s(9000, 400)) * np.exp(-steps / 60000)  # weight decay never stops
    return pd.DataFrame({"step": steps, "train_loss": train, "train_accuracy": s(300, 40), "excluded_loss": excluded,
                         "restricted_loss": 10 ** (1.2 - 7 * s(6000, 800)), "test_loss": 10 ** (0.7 + 0.8 * s(600, 150) - 8 * s(9000, 400)),
                         "sum_squared_weights": weights})


def test_a_longer_run_does_not_move_the_phases():
    """Before decision 27 cleanup ended at 90% of the weights' fall *to the end of the run*: with
    weight decay still at work, twice the steps moved it by thousands of steps."""
    grid = lambda end: np.unique(np.round(np.concatenate([np.logspace(0, np.log10(end), 80), np.arange(0, end + 1, 125)])).astype(int))  # noqa: E731
    short, long = find_phases(_nanda_like_on(grid(20000))), find_phases(_nanda_like_on(grid(40000)))
    for name in ("memorisation", "circuit_formation", "cleanup"):
        for edge in ("start", "end"):
            assert abs(short[name][edge] - long[name][edge]) <= 125, (name, edge, short[name], long[name])


def test_the_phases_read_no_test_quantity():
    """Moving only the test loss's drop (a held-out quantity) must not move a phase; the
    memorisation minimum used to be sought only before the test loss's drop."""
    t = nanda_like()
    moved = t.copy()
    moved["test_loss"] = 10 ** (0.7 - 8 * step_sigmoid(450, 60))  # an (implausibly) early test-loss drop
    a, b = find_phases(t), find_phases(moved)
    assert all(a[n] == b[n] for n in ("memorisation", "circuit_formation", "cleanup"))


def test_a_brief_dip_of_the_weights_after_memorisation_is_not_the_cleanup():
    """Seed 1 of grokking-1l: right after memorisation the weights dipped for a few dense early
    checkpoints, the fastest fall per step; read as the cleanup, it left no excluded-loss rise
    before it and no phase was found. The cleanup is sought once the circuit is forming."""
    t = nanda_like()
    dip = np.exp(-((STEPS - 1500) / 80.0) ** 2)  # a 10% dip over ~200 steps just after memorisation ends (~1,100)
    t["sum_squared_weights"] = t["sum_squared_weights"] * (1 - 0.1 * dip)
    ph = find_phases(t)
    assert ph["cleanup"] is not None and 9000 < ph["cleanup"]["end"] < 11000, ph["cleanup"]
    assert 4000 < ph["circuit_formation"]["end"] < 7000
