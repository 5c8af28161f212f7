"""The metrics store: replace by key, whole-metric clears, provenance, SQL, and two writers at once."""

import multiprocessing as mp

import pandas as pd
import pytest

from icl_lab.errors import ConfigError
from icl_lab.run.store import COLUMNS, MetricsStore
from icl_lab.train.layout import RunLayout


def _rows(metric, steps, value, heads=(None,)):
    return pd.DataFrame([{"run": "r", "step": s, "tokens": 10 * s, "metric": metric, "layer": None if h is None else 0,
                          "head": h, "value": value} for s in steps for h in heads])


def test_replace_by_key_keeps_other_rows(tmp_path):
    store = MetricsStore(RunLayout(tmp_path))
    store.write(_rows("loss", [0, 1], 1.0))
    store.write(_rows("prefix_matching", [0, 1], 0.5, heads=(0, 1)))
    table = store.write(_rows("loss", [1], 2.0))  # replaces exactly (r, 1, loss)
    assert list(table.columns) == COLUMNS and len(table) == 2 + 4
    loss = table[table.metric == "loss"].set_index("step").value
    assert loss[0] == 1.0 and loss[1] == 2.0
    # clear drops a whole metric first: a checkpoint that is gone loses its rows
    table = store.write(_rows("prefix_matching", [1], 0.9, heads=(0, 1)), clear={"prefix_matching"})
    assert set(table[table.metric == "prefix_matching"].step) == {1} and len(table[table.metric == "loss"]) == 2


def test_repeated_keys_are_refused_before_anything_is_written(tmp_path):
    store = MetricsStore(RunLayout(tmp_path))
    with pytest.raises(ConfigError, match="repeat the key"):
        store.write(pd.concat([_rows("loss", [0], 1.0), _rows("loss", [0], 2.0)]))
    assert not store.exists()


def test_provenance_and_sql(tmp_path):
    store = MetricsStore(RunLayout(tmp_path))
    store.write(_rows("icl_score", [0, 1, 2], -1.0), provenance={"icl_score": {"eval_set": "sha256:abc"}})
    store.write(_rows("loss", [0], 3.0), provenance={"loss": {"eval_set": "sha256:def"}})
    assert store.provenance("icl_score") == {"eval_set": "sha256:abc"} and set(store.provenance()) == {"icl_score", "loss"}
    out = store.query("select metric, count(*) as n from metrics group by metric order by metric")
    assert out.to_dict("list") == {"metric": ["icl_score", "loss"], "n": [3, 1]}
    with pytest.raises(ConfigError, match="query failed"):
        store.query("select nope from metrics")


def _writer(root: str, metric: str, n: int) -> None:
    store = MetricsStore(RunLayout(__import__("pathlib").Path(root)))
    for i in range(n):
        store.write(_rows(metric, [i], float(i)))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), m, 15)) for m in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    table = MetricsStore(RunLayout(tmp_path)).read()
    assert sorted(table.groupby("metric").size().to_dict().items()) == [("a", 15), ("b", 15)]


def test_the_lock_is_reentrant_within_a_process(tmp_path, monkeypatch):
    """`with store.lock(): store.write(rows)` used to wait for its own lock until the timeout
    (a second FileLock object per call); a short timeout makes that a failure, not a hang."""
    import icl_lab.run.store as store_module

    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 2.0)
    store = MetricsStore(RunLayout(tmp_path))
    with store.lock():
        store.write(_rows("a", [0], 1.0))
        with MetricsStore(RunLayout(tmp_path)).lock():  # another handle on the same run, same process
            store.write(_rows("b", [0], 2.0))
    assert sorted(store.read().metric) == ["a", "b"]
