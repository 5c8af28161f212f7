"""Where an out-of-context reasoning run's summary is stored: files only, so the report reads it
without building a model."""

from __future__ import annotations

from pathlib import Path

from icl_lab.run.files import RunFiles


def summary_path(files: RunFiles) -> Path:
    """RUN/analysis/oocr.json: the final accuracies, losses and (after `run_task`) the circuits."""
    return files.layout.analysis_dir / "oocr.json"
