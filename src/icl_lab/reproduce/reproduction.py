"""`reproduce`: run the paper's arguments on a lab of small models and write one report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from icl_lab.errors import ConfigError
from icl_lab.io import write_json, write_text
from icl_lab.reproduce.circuit_args import argument_3, argument_5
from icl_lab.reproduce.continuity import argument_6
from icl_lab.reproduce.family import SCALES, Lab, Log, TrainProgress
from icl_lab.reproduce import natural
from icl_lab.reproduce.generality import argument_4
from icl_lab.reproduce.page import render
from icl_lab.reproduce.training_args import argument_1, argument_2
from icl_lab.reproduce.verdict import Check, Section

ARGUMENTS = {
    "argument-1": argument_1,
    "argument-2": argument_2,
    "argument-3": argument_3,
    "argument-4": argument_4,
    "argument-5": argument_5,
    "argument-6": argument_6,
}


@dataclass(frozen=True)
class Reproduction:
    """What `reproduce` wrote: the report, the verdicts JSON, each argument's section."""

    report: Path
    verdicts_json: Path
    sections: list[Section]
    seconds: float

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.sections for c in s.checks]


def parse_arguments(names: Sequence[str]) -> list[str]:
    """["all"] or argument names (also "1".."6") -> argument names in order, without repeats.

    Raises:
        ConfigError: an unknown name.
    """
    chosen = set()
    for name in names:
        if name == "all":
            chosen |= set(ARGUMENTS)
            continue
        full = f"argument-{name}" if name.isdigit() else name
        if full not in ARGUMENTS:
            raise ConfigError(f"unknown argument {name!r}; choose all or argument-1 ... argument-6")
        chosen.add(full)
    if not chosen:
        raise ConfigError("name at least one argument (argument-1 ... argument-6) or all")
    return [a for a in ARGUMENTS if a in chosen]


def _natural_arguments(asked: Sequence[str], names: list[str]) -> list[str]:
    if list(asked) == ["all"]:
        return list(natural.ARGUMENTS)
    other = [n for n in names if n not in natural.ARGUMENTS]
    if other:
        raise ConfigError(f"{', '.join(other)} needs synthetic data; --data natural runs {' and '.join(natural.ARGUMENTS)}")
    return names


def reproduce(arguments: Sequence[str] = ("all",), out: str | Path = "runs/reproduce", scale: str = "default",
              pretrained: bool | None = None, log: Log | None = None, train_progress: TrainProgress | None = None,
              data: str = "synthetic", corpus: str | None = None, device: str | None = None,
              dtype: str | None = None) -> Reproduction:
    """Reproduce the six arguments of Olsson et al. (2022) on small models, reusing every run,
    analysis and ablation already in `out`.

    Args:
        arguments: "all", or some of "argument-1" ... "argument-6".
        out: the folder of runs; the report goes to `out/report.html`, the verdicts to
            `out/verdicts.json` (a list of {argument, claim, metric, value, threshold, passed}).
        scale: "default" (CPU, about 15 minutes from scratch), "tiny" (seconds; a smoke test, whose
            verdicts mean nothing) or "paper" (wider models, longer contexts: for a GPU).
        pretrained: add SmolLM2-135M to Argument 6's table (default: at every scale but "tiny").
        log: called with a line for each step taken.
        train_progress: called with (run name, step, total) while training.
        data: "synthetic" (the model family on repeated random segments) or "natural" (Arguments 1
            and 3 on the natural-text presets, `icl_lab.reproduce.natural`).
        corpus: for "natural": another text to train and measure on (default: the presets').
        device, dtype: where the runs train and are analysed, and the analyses' precision (`Lab`).

    Returns:
        The `Reproduction`.

    Raises:
        ConfigError: an unknown argument or scale, or `out` holds runs of another scale.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if data not in ("synthetic", "natural"):
        raise ConfigError(f"unknown data {data!r}; choose synthetic or natural")
    names = parse_arguments(arguments)
    configure = None
    if data == "natural":
        names = _natural_arguments(arguments, names)
        natural.natural_experiment(natural.PURE, scale, 0)  # a scale natural data cannot run at fails here, before any work
        configure = lambda name, seed: natural.natural_experiment(name, scale, seed, corpus)  # noqa: E731
    elif corpus:
        raise ConfigError("--corpus applies to --data natural only")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lab = Lab(out, SCALES[scale], log=log or (lambda line: None), train_progress=train_progress, configure=configure,
              device=device, dtype=dtype)
    t0 = time.perf_counter()
    sections = []
    for name in names:
        lab.log(f"{name}")
        start = time.perf_counter()
        if data == "natural":
            section = natural.argument_1(lab) if name == "argument-1" else natural.argument_3(lab)
        elif name == "argument-6":
            section = argument_6(lab, pretrained if pretrained is not None else scale != "tiny")
        else:
            section = ARGUMENTS[name](lab)
        section.seconds = time.perf_counter() - start
        sections.append(section)
    seconds = time.perf_counter() - t0
    report = out / "report.html"
    write_text(report, render(sections, scale if data == "synthetic" else f"{scale}, natural text", seconds))
    verdicts = out / "verdicts.json"
    write_json(verdicts, [c.to_json() for s in sections for c in s.checks])
    return Reproduction(report, verdicts, sections, seconds)
