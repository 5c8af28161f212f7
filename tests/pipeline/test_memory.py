"""The memory contract (docs/pipeline.md), measured: each measurement of `analyze`, on a model with
many layers, heads and a long context, holds no more than its working budget (or its one-sequence
floor) above what it was given, and the analysis as a whole stays under the plan it is refused by.

Peaks are read from the kernel: /proc/self/clear_refs resets VmHWM (the peak resident set) before
each step, and VmHWM after it is the step's true peak, however briefly it lasted. The probe runs in
a fresh process with glibc returning freed blocks of 64 KiB and more at once, so one step's
leftovers cannot hide the next one's allocations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icl_lab.errors import ResourceError
from icl_lab.measure.memory import MiB, parse_size

BUDGET = 16 * MiB  # small, so chunking is what keeps every step under it
SLACK = 24 * MiB  # Python objects, the bootstrap's resampling weights, torch's thread-local buffers
CONFIG = {"n_layers": 6, "n_heads": 8, "d_model": 64, "d_head": 8, "d_mlp": 256, "d_vocab": 512, "n_ctx": 512}

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")


def _status() -> tuple[int, int]:
    text = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def _peak_above(fn) -> int:
    """Bytes the resident set rose above its level before `fn()` at its peak during it, on a second
    call: the first pays one-time costs (library code paged in, thread pools) that are no working set."""
    fn()
    Path("/proc/self/clear_refs").write_text("5")
    before, _ = _status()
    fn()
    return _status()[1] - before


def probe(out: str) -> None:
    """Build a 6-layer, 8-head, 512-token run, measure each analysis step's peak, write JSON."""
    import torch

    import icl_lab
    from icl_lab.measure.memory import forward_row_bytes, model_bytes
    from icl_lab.pipeline.analysis import ANALYSIS
    from icl_lab.pipeline.analyze import analysis_plan, group_ablation
    from icl_lab.pipeline.base import Context, measurements, start_all
    from icl_lab.pipeline.evalstore import eval_set_for
    from icl_lab.pipeline.views import AttentionViewer, Composition
    from icl_lab.train.checkpoint import load_weights_into

    torch.set_num_threads(1)
    cfg = icl_lab.get_preset("synthetic-2l").replace(
        model=CONFIG, data={"max_period": 40}, train={"steps": 2, "batch_size": 2, "n_checkpoints": 2, "log_every": 1, "warmup_steps": 1})
    run = icl_lab.train(cfg, out=Path(out).parent / "run")
    ev = eval_set_for(run, 32)
    result = {"steps": {}, "floors": {}}
    ms = [*measurements(ANALYSIS), AttentionViewer(), Composition()]
    model = icl_lab.Transformer(run.config.model).eval()
    load_weights_into(model, run.layout.checkpoint(run.checkpoints[-1]))
    ctx = Context(run, run.checkpoints[-1], 0, run.checkpoints, model, ev, BUDGET, frozenset(n for m in ms for n in m.needs))
    itemsize = 4

    def fresh(m):  # a measurement reading the shared evaluation pass pays for it here
        ctx._shared.clear()
        m.measure(ctx)

    with torch.inference_mode():
        for m in ms:
            result["steps"][f"start {m.name}"] = _peak_above(lambda: start_all([m], run, ev, None, None, BUDGET))
            result["steps"][m.name] = _peak_above(lambda: fresh(m))
            result["floors"][m.name] = m.floor_bytes(run.config.model, ev, itemsize)
        result["floors"]["previous_token"] = forward_row_bytes(run.config.model, ev.tokens.shape[1], itemsize, patterns=True)
    heads = [(5, 0), (3, 2)]
    result["steps"]["induction_ablation"] = _peak_above(lambda: group_ablation(run, ev, heads, None, None, BUDGET))
    result["floors"]["induction_ablation"] = 2 * forward_row_bytes(run.config.model, ev.tokens.shape[1], itemsize, logits=False)
    result["model_bytes"] = model_bytes(run.config.model, itemsize)
    plan = analysis_plan(run, ev, None, 8 * 2**30)
    result["plan"] = {"resident": plan.resident, "peak": plan.peak, "working": plan.working}
    Path(out).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("memory") / "probe.json"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    code = f"from tests.pipeline.test_memory import probe; probe({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).resolve().parents[2], timeout=600)
    return json.loads(out.read_text())


def test_every_measurement_holds_no_more_than_its_contract(probed):
    """Fails on the code before issue #28: the previous-token score held 8 sequences' patterns and
    logits, the loss pass 256 sequences' logits, and the group ablation every layer's pattern for
    every evaluation sequence."""
    floors, model = probed["floors"], probed["model_bytes"]
    over = []
    for step, peak in probed["steps"].items():
        name = step.removeprefix("start ")
        # a start may build the baseline model
        allowed = max(BUDGET, floors.get(name, 0)) + SLACK + (model if step.startswith("start ") else 0)
        if peak > allowed:
            over.append(f"{step}: {peak / MiB:.0f} MiB > {allowed / MiB:.0f} MiB")
    assert not over, "; ".join(over)


def test_the_contract_is_not_vacuous(probed):
    """The budget binds: the heaviest steps come close to it (else a leak of 2x could hide in it)."""
    peaks = probed["steps"]
    assert max(peaks["loss"], peaks["previous_token"]) > BUDGET / 2


def test_the_plan_bounds_the_whole_analysis(tmp_path):
    """`analyze` in a fresh process rises above where it started by no more than the plan allows
    above its runtime: the plan's runtime floor (RUNTIME_BYTES) cannot hide what the walk adds
    (before FIRST_USE_BYTES the first walk rose 27-31 MiB above the plan; CI failed on it)."""
    code = f"""
import json, icl_lab
from pathlib import Path
from tests.pipeline.test_memory import CONFIG, _status
from icl_lab.pipeline.analyze import analysis_plan
from icl_lab.pipeline.evalstore import eval_set_for
from icl_lab.pipeline.memory import RUNTIME_BYTES
cfg = icl_lab.get_preset('synthetic-2l').replace(model=CONFIG, data={{'max_period': 40}},
                                                 train={{"steps": 2, "batch_size": 2, "n_checkpoints": 2, "warmup_steps": 1}})
run = icl_lab.train(cfg, out={str(tmp_path / 'run')!r})
Path("/proc/self/clear_refs").write_text("5")
start, _ = _status()
plan = analysis_plan(run, eval_set_for(run, 32), None, '2GB')  # as analyze plans it, before any work
icl_lab.analyze([run], n_examples=32, max_memory='2GB')
print(json.dumps({{'rise': _status()[1] - start, 'allowed': plan.peak - max(RUNTIME_BYTES, start)}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=600)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rise"] <= got["allowed"], f"rose {got['rise'] / MiB:.0f} MiB, over the plan's {got['allowed'] / MiB:.0f} MiB"


def test_an_analysis_that_cannot_fit_is_refused_in_one_line(tmp_path):
    import icl_lab

    cfg = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 4, "n_checkpoints": 2, "warmup_steps": 1})
    run = icl_lab.train(cfg, out=tmp_path / "r")
    with pytest.raises(ResourceError, match=r"analyzing r needs about .* of 10 MB .*raise --max-memory") as e:
        icl_lab.analyze([run], max_memory="10MB")
    assert "\n" not in str(e.value)
    assert not run.layout.summary.is_file()  # refused before any work


@pytest.mark.parametrize("text, value", [("4GB", 4 * 2**30), ("512MiB", 512 * MiB), ("2.5G", int(2.5 * 2**30)), (1000, 1000)])
def test_sizes_read_as_written(text, value):
    assert parse_size(text) == value
