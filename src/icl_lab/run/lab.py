"""What an organism's lab runner returns (`icl_lab.organisms.*.lab`): one shape for every organism,
so a new one copies no result class, and the callback types its runners take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from icl_lab.run.rundir import Run

Log = Callable[[str], None]  # called with a line for each thing done
TrainProgress = Callable[[str, int, int], None]  # (run name, step, total)


@dataclass(frozen=True)
class LabResult:
    """One run's outcome.

    Attributes:
        run: the run directory.
        summary: the organism's summary (its `analysis/*.json`).
        report: the run's HTML page.
        seconds: wall-clock time of this call, training included.
        trained: whether this call trained (False when the run was reused).
    """

    run: Run
    summary: dict
    report: Path
    seconds: float
    trained: bool = False
