"""The organism registry's core half: what the core layers know about a model organism (a data
kind with its own task, measurements and report section) without importing it. An organism
package (`icl_lab.organisms.*`) builds an `Organism` record and calls `register`; the core looks
it up by `DataConfig.kind` with `organism`. `icl_lab.organisms` lists the organism packages and
`icl_lab/__init__.py` imports it, so the table is full before any config is parsed
(docs/organisms.md).

Example:
    >>> from icl_lab.kinds import organism
    >>> organism("modular").hint("runs/grokking/p113-f0.3-wd1-s0")   # how to measure such a run
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icl_lab.errors import ConfigError


@dataclass(frozen=True)
class ReportSection:
    """An organism's part of the HTML report (`icl_lab.report`), read from stored files only.

    Attributes:
        collect: (RunFiles) -> dict | None: what the organism's section shows, or None before
            the run is measured; stored in `RunData.organism`.
        missing: (RunFiles, collected) -> list[str]: one line per gap, naming the command that fills it.
        verdict: (RunData) -> list[str]: the organism's verdict lines (its runs get no
            in-context-learning verdict); None keeps the in-context-learning verdict.
        render: (RunData) -> (figures {id: plotly figure}, title, lead, body html): the section;
            the body places each figure with `icl_lab.report.page.plot_div(id)`.
    """

    collect: Callable[[Any], dict | None]
    missing: Callable[[Any, dict | None], list[str]]
    render: Callable[[Any], tuple[dict, str, str, str]] | None = None
    verdict: Callable[[Any], list[str]] | None = None


@dataclass(frozen=True)
class Organism:
    """One model organism, as the core layers see it.

    Attributes:
        kind: its `DataConfig.kind`; its task's config is the `data.<kind>` section.
        title: what its runs are called in messages ("modular-addition").
        how_to_train: the command that trains one ("train one with `icl-lab grok`").
        config: the section's config class (a `FrozenConfig`).
        stream: (DataConfig, d_vocab, n_ctx, batch_size, seed) -> a `SeededStream`.
        problem: (section, d_vocab, n_ctx) -> why a model cannot hold the task, or None.
        how_to_measure: what to do with one of its runs, with `{run}` for the run directory
            ("measure it with `icl-lab grok --run {run}`"); error messages end with it.
        measurements: the names it registers with `icl_lab.pipeline.REGISTRY`.
        viewer_samples: (Run) -> (tokens [sample, pos], sample records) for the attention
            viewer; None: the organism stores no viewer.
        report: () -> `ReportSection`, called on first use (the report imports plotly).
        add_commands: (typer app) -> None, its CLI commands (called by `icl_lab.cli`).
    """

    kind: str
    title: str
    how_to_train: str
    config: type
    stream: Callable[..., Any]
    problem: Callable[[Any, int, int], str | None]
    how_to_measure: str
    measurements: tuple[str, ...] = ()
    viewer_samples: Callable[[Any], tuple[Any, list[dict]]] | None = None
    report: Callable[[], ReportSection] | None = None
    add_commands: Callable[[Any], None] | None = None

    def hint(self, run: object) -> str:
        """What to do with `run`: `how_to_measure` filled in."""
        return self.how_to_measure.format(run=run)

    def section_of(self, run: Any) -> Any:
        """`run`'s task section (`run.config.data.<kind>`).

        Raises:
            ConfigError: `run` trained on another kind of data.
        """
        kind = run.config.data.kind
        if kind != self.kind:
            raise ConfigError(f"{run.path} is not {_article(self.title)} {self.title} run (data.kind={kind!r}); {self.how_to_train}")
        return getattr(run.config.data, self.kind)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


_ORGANISMS: dict[str, Organism] = {}


def register(org: Organism) -> Organism:
    """Add `org` to the table (once per kind; re-registering the same kind replaces it, so a
    reloaded module does not fail)."""
    if not org.kind.isidentifier():
        raise ConfigError(f"organism kind {org.kind!r} is not an identifier; it names the data.{org.kind} config section")
    _ORGANISMS[org.kind] = org
    return org


def organism(kind: str) -> Organism | None:
    """The organism of data kind `kind`, or None for a core kind (repeated, text, ...)."""
    return _ORGANISMS.get(kind)


def organisms() -> list[Organism]:
    """Every registered organism, in registration order."""
    return list(_ORGANISMS.values())
