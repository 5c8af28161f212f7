"""The verdict: which heads count as induction heads, and what ablating them together removes."""

import pytest

from icl_lab.report.verdict import Verdict, induction_heads, judge, verdict_lines


def _summary(heads, induction=()):
    keys = ("prefix_matching", "ov_eigen_positivity", "copying")
    return {"heads": [{"layer": l, "head": h, **dict(zip(keys, v))} for (l, h), v in heads.items()],
            "induction_heads": [{"layer": l, "head": h} for l, h in induction]}


def test_the_verdict_reads_the_summary_list_and_never_falls_back():
    s = _summary({(0, 0): (0.9, 0.9, 0.9), (1, 0): (0.9, 0.99, -0.6)}, induction=[(0, 0)])
    assert induction_heads(s) == ([(0, 0)], "prefix_matching > 0.5 and copying > 0.5")
    # a prefix-matching head with a copying spectrum but a low copying score is not named
    assert induction_heads(_summary({(1, 0): (0.8, 0.99, -0.6)})) == ([], "")


def test_lines_cover_every_run_and_say_what_is_missing():
    lines = verdict_lines([
        Verdict("two", True, (2.7e5, 8.0e5), ((1, 0),), "crit", 0.991, -4.77),
        Verdict("one", True, None, (), "", None, -2.6),
        Verdict("new", False),
    ])
    assert len(lines) == 3
    assert lines[0].startswith("Phase change: two at 270k-800k tokens; one none") and "new not analysed yet" in lines[0]
    assert lines[1] == "Induction heads: two L1H0 (crit); one none."
    assert "two L1H0 removes 99% of the ICL score (-4.77 nats)" in lines[2] and "one has no induction heads" in lines[2]
    assert verdict_lines([Verdict("new", False)])[0].startswith("Phase change: unknown")


def test_trained_run_verdict(two, one):
    v = judge(two)
    assert v.analysed and v.phase_change is not None
    assert v.induction_heads == ((1, 0),)
    assert v.removed == pytest.approx(1.0, abs=0.2)  # the single induction head carries the ICL score
    control = judge(one)
    assert control.induction_heads == () and control.removed is None


def test_unanalysed_run_is_reported_as_such(tmp_path):
    import icl_lab

    cfg = icl_lab.get_preset("synthetic-1l").replace(train={"steps": 20, "warmup_steps": 5, "n_checkpoints": 4})
    run = icl_lab.train(cfg, out=tmp_path / "r")
    assert judge(run) == Verdict("r", analysed=False)
