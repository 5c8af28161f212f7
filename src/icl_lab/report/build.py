"""Build a report from run directories: collect each run's stored results, judge it, render the
page, write it atomically. `write_report` is what `icl-lab report` calls."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from icl_lab.errors import ConfigError
from icl_lab.io import write_text
from icl_lab.report.collect import RunData, collect_run, report_section
from icl_lab.report.family import family_page, family_table, is_sweep_dir
from icl_lab.report.page import render_html
from icl_lab.report.verdict import Verdict, judge, verdict_lines
from icl_lab.run.files import RunFiles, open_run_files

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Report:
    """A written report: its path, the verdict lines and each run's verdict."""

    path: Path
    verdict: list[str]
    verdicts: list[Verdict]


def default_out(paths: Sequence[str | Path]) -> Path:
    """RUN/report.html for one run; the runs' common parent's report.html for several."""
    if len(paths) == 1:
        return Path(paths[0]) / "report.html"
    return Path(os.path.commonpath([Path(p).resolve() for p in paths])) / "report.html"


def build_report(runs: Sequence[RunFiles], progress: Progress | None = None,
                 refresh_s: int | None = None) -> tuple[str, list[Verdict], list[str]]:
    """The report page's HTML for `runs`, their verdicts and the verdict lines, from their stored
    files alone (nothing is computed or written)."""
    data: list[RunData] = []
    verdicts: list[Verdict] = []
    for i, run in enumerate(runs):
        data.append(collect_run(run))
        section = report_section(run.config.data.kind)
        if section is None or section.verdict is None:  # an organism with its own verdict lines replaces this one
            verdicts.append(judge(run))
        if progress is not None:
            progress("report", i + 1, len(runs) + 1)
    lines = verdict_lines(verdicts) if verdicts else []
    for d in data:
        section = report_section(d.kind)
        if d.organism and section is not None and section.verdict is not None:
            lines += section.verdict(d)
    page = render_html(data, lines, refresh_s=refresh_s)
    if progress is not None:
        progress("report", len(runs) + 1, len(runs) + 1)
    return page, verdicts, lines


def write_report(paths: Sequence[str | Path], out: str | Path | None = None, progress: Progress | None = None) -> Report:
    """Write one offline HTML report for the run directories `paths`.

    Args:
        paths: run directories; analysed runs get every section, others the loss curve and a
            line naming the command that fills each gap (the report reads, never computes).
        out: the HTML file (default: see `default_out`).
        progress: optional callback(what, done, total).

    Returns:
        The `Report` (path and verdict).

    Raises:
        ConfigError: no runs, or `out` is not an .html file.
        CheckpointError: a path is not a run directory.
    """
    if not paths:
        raise ConfigError("report needs at least one run directory")
    out = Path(out) if out is not None else default_out(paths)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out} should end in .html; the report is one HTML file")
    if len(paths) == 1 and is_sweep_dir(paths[0]):  # a sweep folder: the family report
        table = family_table(paths[0])
        page = family_page(paths[0])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, page)
        ok = table[table.status == "ok"]
        return Report(out, [f"family of {len(table)} trials ({len(ok)} finished); "
                            f"{int(ok.phase_change.fillna(False).astype(bool).sum())} show a phase change"], [])
    runs = [open_run_files(p) for p in paths]
    page, verdicts, lines = build_report(runs, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return Report(out, lines, verdicts)
