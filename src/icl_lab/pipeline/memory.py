"""Before any work: will this analysis fit in memory? `plan_memory` adds up what a walk holds (the
runtime, the model, the largest weight while a checkpoint is copied in, the evaluation tokens) and
the largest working set any of its measurements may hold under the memory contract
(`icl_lab.measure.memory`, docs/pipeline.md), and picks the working budget from `--max-memory`.
`check_memory` refuses, in one line naming the knob, a run that would not fit in that limit or in
the memory the machine has free, instead of letting the kernel kill it hours later."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from icl_lab.errors import ResourceError
from icl_lab.measure.evalset import EvalSet
from icl_lab.measure.memory import DEFAULT_MAX_BYTES, GiB, MiB, format_size, largest_tensor_bytes, model_bytes, parse_size
from icl_lab.measure.placement import resolve_dtype
from icl_lab.model.config import ModelConfig
from icl_lab.pipeline.base import Measurement

DEFAULT_MAX_MEMORY = 8 * GiB  # a 16 GB laptop, with half left to the OS, a browser and an editor
RUNTIME_BYTES = 640 * MiB  # Python, torch, pandas, pyarrow and a tokenizer before any model (0.36-0.5 GB measured)
# paid once, on the first walk, above the working budget: library code paged in, torch's thread-local
# buffers, pyarrow's write buffers, Python objects; a 6-layer 512-token analysis rose 27-31 MiB above
# its working budget on its first call (here; CI's rise is unknown but at least as large) and stayed
# inside it on its second: three times that
FIRST_USE_BYTES = 96 * MiB


@dataclass(frozen=True)
class MemoryPlan:
    """What a walk of one run will hold, in bytes.

    Attributes:
        limit: the most it may use (`--max-memory`, or the free memory if that is less).
        runtime: this process's resident memory when planned, at least RUNTIME_BYTES.
        resident: runtime + FIRST_USE_BYTES + model + the largest weight being copied in + evaluation tokens.
        working: each measurement's working budget (what its chunks may hold at once).
        floors: measurement name -> the least it needs for one sequence (its one-row floor).
        peak: the estimated peak, resident + the largest working set.
    """

    limit: int
    runtime: int
    resident: int
    working: int
    floors: dict[str, int]
    peak: int

    def describe(self) -> str:
        return (f"about {format_size(self.peak)} (resident {format_size(self.resident)}, "
                f"working {format_size(self.peak - self.resident)}) of {format_size(self.limit)}")


def available_memory() -> int:
    """Memory the machine can give now: MemAvailable on Linux, else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_now() -> int:
    """This process's resident memory now (Linux /proc/self/statm; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def plan_memory(cfg: ModelConfig, ms: Sequence[Measurement], ev: EvalSet | None, max_memory: int | str | None = None,
                dtype: str | None = None) -> MemoryPlan:
    """The memory plan of walking a model of `cfg` with `ms` on `ev`, under `max_memory` (bytes
    or "8GB"; default DEFAULT_MAX_MEMORY, and never more than the machine has free).

    The working budget is what is left after the resident part, capped at DEFAULT_MAX_BYTES
    (larger chunks do not run faster on a CPU)."""
    itemsize = resolve_dtype(dtype).itemsize
    limit = min(parse_size(max_memory) if max_memory is not None else DEFAULT_MAX_MEMORY, available_memory())
    tokens = 0 if ev is None else sum(t.numel() * 8 for t in (ev.tokens, ev.repeated, ev.random))
    # what this process already holds (imports, earlier work), at least the usual runtime: a machine
    # with more libraries loaded starts higher (CI measured 1018 MiB against a fixed 640 MiB runtime)
    runtime = max(RUNTIME_BYTES, resident_now())
    resident = runtime + FIRST_USE_BYTES + model_bytes(cfg, itemsize) + largest_tensor_bytes(cfg, 4) + tokens
    floors = {m.name: m.floor_bytes(cfg, ev, itemsize) for m in ms}
    working = max(min(DEFAULT_MAX_BYTES, limit - resident), max(floors.values(), default=0))
    peak = resident + working
    return MemoryPlan(limit=limit, runtime=runtime, resident=resident, working=working, floors=floors, peak=peak)


def check_memory(plan: MemoryPlan, what: str, knob: str = "--max-memory") -> None:
    """Raise if `plan` does not fit its limit, naming the measurement that needs the most and the
    knobs that help.

    Raises:
        ResourceError: the estimated peak exceeds the limit.
    """
    if plan.peak <= plan.limit:
        return
    worst = max(plan.floors, key=plan.floors.get) if plan.floors else "the model"
    raise ResourceError(f"{what} needs {plan.describe()} (largest single sequence: {worst}, "
                        f"{format_size(plan.floors.get(worst, 0))}); raise {knob} if the machine has the memory, "
                        "or measure in --dtype bf16, or on fewer measurements with --only")
