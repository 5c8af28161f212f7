"""`verify_run`: check every file of a run directory without changing any — config.json parses,
meta.json is whole and no trainer was killed mid-run, every line of the log, the tokenizer, every
checkpoint's content hash and shapes, the analysis files, and no temporary file left by a killed
write. Each problem comes with the command that fixes it. Behind `icl-lab verify RUN`.

Example:
    >>> report = verify_run("runs/synthetic-2l-seed0")
    >>> report.ok, [p.detail for p in report.problems]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from icl_lab.data.tokenizer import Tokenizer
from icl_lab.errors import CheckpointError, IclLabError
from icl_lab.io import TEMP_FILE
from icl_lab.model.transformer import Transformer
from icl_lab.train.checkpoint import HASH_KEY, read_checkpoint
from icl_lab.train.config import ExperimentConfig
from icl_lab.train.layout import RunLayout
from icl_lab.train.lock import lock_holder
from icl_lab.train.records import read_log, read_meta


@dataclass(frozen=True)
class FileCheck:
    """One checked file (or, for whole checkpoints, all of them in one row).

    Attributes:
        file: path relative to the run directory.
        ok: whether it passed.
        detail: what was found.
        fix: for a problem, what to do about it.
    """

    file: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Verification:
    """The result of `verify_run`: one `FileCheck` per file checked."""

    path: Path
    checks: list[FileCheck]

    @property
    def problems(self) -> list[FileCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(path: str | Path) -> Verification:
    """Check every file of the run directory `path`; reads only, never repairs.

    Returns:
        A `Verification`; `.problems` lists what failed, each with its `fix`.

    Raises:
        CheckpointError: `path` is not a directory.
    """
    layout = RunLayout(Path(path))
    if not layout.root.is_dir():
        raise CheckpointError(f"run directory {layout.root} not found; check the path")
    resume = f"rerun `icl-lab train --resume --out {layout.root}`"
    cfg, config_check = _config(layout)
    meta, meta_check = _meta(layout, resume)
    imported = "family" in meta or "imported_from" in meta
    checks = [config_check, meta_check, _log(layout, resume), *_tokenizer(layout, meta)]
    checks += _checkpoints(layout, cfg, "import the model again" if imported else resume)
    checks += _analysis(layout)
    for folder in (layout.root, layout.checkpoint_dir, layout.analysis_dir):
        if folder.is_dir():
            checks += [FileCheck(_rel(layout, p), False, "temporary file left by a killed write",
                                 "delete it (`icl-lab train --resume` removes those of the run and its checkpoints)")
                       for p in sorted(folder.iterdir()) if TEMP_FILE.fullmatch(p.name)]
    return Verification(layout.root, checks)


def _rel(layout: RunLayout, p: Path) -> str:
    return str(p.relative_to(layout.root))


def _config(layout: RunLayout) -> tuple[ExperimentConfig | None, FileCheck]:
    if not layout.config.is_file():
        return None, FileCheck("config.json", False, "missing", "restore it from a copy (config.json alone reruns the run)")
    try:
        cfg = ExperimentConfig.load(layout.config)
    except IclLabError as e:
        return None, FileCheck("config.json", False, str(e), "restore it from a copy, or fix the field named")
    return cfg, FileCheck("config.json", True, f"{cfg.name}: {cfg.model.n_layers} layers, {cfg.train.steps} steps")


def _meta(layout: RunLayout, resume: str) -> tuple[dict, FileCheck]:
    if not layout.meta.is_file():
        return {}, FileCheck("meta.json", False, "missing", resume)
    try:
        meta = read_meta(layout.meta)
    except IclLabError as e:
        return {}, FileCheck("meta.json", False, str(e), "restore it, or delete it and " + resume)
    status = meta.get("status")
    if status == "running":
        holder = lock_holder(layout)
        if holder is None:
            return meta, FileCheck("meta.json", False, "status running, but no trainer holds the run's lock: it was killed", resume)
        return meta, FileCheck("meta.json", True, f"status running (training now: {holder})")
    if status == "stopped":
        return meta, FileCheck("meta.json", True, f"status stopped: {meta.get('stop_reason', 'no reason recorded')}")
    return meta, FileCheck("meta.json", True, f"status {status}" if status else "imported model")


def _log(layout: RunLayout, resume: str) -> FileCheck:
    if not layout.log.is_file():
        return FileCheck("train_log.jsonl", True, "none (an imported model, or training has not started)")
    try:
        log = read_log(layout.log)
    except (IclLabError, OSError) as e:
        return FileCheck("train_log.jsonl", False, str(e), "delete the damaged line and the ones after it, then " + resume)
    if log.torn:
        return FileCheck("train_log.jsonl", False, f"ends in a line cut off mid-write ({log.torn[:30]!r})", resume + " (it drops the line)")
    steps = f", steps {log.rows[0]['step']}..{log.rows[-1]['step']}" if log.rows else ""
    return FileCheck("train_log.jsonl", True, f"{len(log.rows)} rows{steps}")


def _tokenizer(layout: RunLayout, meta: dict) -> list[FileCheck]:
    if not layout.tokenizer.is_file():
        return []
    try:
        tok = Tokenizer.load(layout.tokenizer)
    except IclLabError as e:
        return [FileCheck("tokenizer.json", False, str(e), "restore it from a copy, or train or import the run again")]
    recorded = meta.get("tokenizer_fingerprint")
    if recorded is not None and tok.fingerprint() != recorded:
        return [FileCheck("tokenizer.json", False, f"fingerprint {tok.fingerprint()}, but meta.json recorded {recorded}",
                          "restore it from a copy, or train or import the run again")]
    return [FileCheck("tokenizer.json", True, f"{tok.kind}, {tok.vocab_size} tokens")]


def _checkpoints(layout: RunLayout, cfg: ExperimentConfig | None, fix: str) -> list[FileCheck]:
    steps = layout.checkpoint_steps()
    if not steps:
        return [FileCheck("checkpoints/", True, "none yet")]
    shapes = None
    if cfg is not None:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            shapes = {f"model.{k}": tuple(v.shape) for k, v in Transformer(cfg.model).state_dict().items()}
    bad, unhashed = [], 0
    for step in steps:
        path = layout.checkpoint(step)
        try:
            meta, tensors = read_checkpoint(path)
        except CheckpointError as e:
            bad.append(FileCheck(_rel(layout, path), False, str(e).split(";")[0].removeprefix(f"checkpoint {path.name} is "), fix))
            continue
        unhashed += HASH_KEY not in meta
        got = {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("model.")}
        if shapes is not None and got != shapes:
            bad.append(FileCheck(_rel(layout, path), False, "its weights do not fit config.json's model", fix))
    good = len(steps) - len(bad)
    note = f" ({unhashed} without a content hash: written before hashes)" if unhashed else ""
    summary = FileCheck("checkpoints/", True, f"{good} of {len(steps)} whole, steps {steps[0]}..{steps[-1]}{note}")
    return [summary, *bad]


def _analysis(layout: RunLayout) -> list[FileCheck]:
    checks = []
    # every JSON file the pipeline stored: the core's and each organism's summary
    stored = sorted(layout.analysis_dir.glob("*.json")) if layout.analysis_dir.is_dir() else []
    for path in stored:
        if path.is_file():
            try:
                json.loads(path.read_bytes().decode("utf-8"))
                checks.append(FileCheck(_rel(layout, path), True, "valid JSON"))
            except (ValueError, RecursionError) as e:
                checks.append(FileCheck(_rel(layout, path), False, f"damaged ({str(e)[:60]})",
                                        f"rerun `icl-lab analyze {layout.root}`"))
    if layout.metrics.is_file():
        import pyarrow.parquet as pq

        try:
            rows = pq.read_metadata(layout.metrics).num_rows
            checks.append(FileCheck(_rel(layout, layout.metrics), True, f"{rows:,} rows"))
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            checks.append(FileCheck(_rel(layout, layout.metrics), False, f"damaged ({str(e).splitlines()[0][:60]})",
                                    f"rerun `icl-lab analyze {layout.root}` (and `icl-lab ablate`)"))
    for path in (layout.eval_set, layout.analysis_dir / "attention.safetensors"):
        if path.is_file():
            checks.append(_tensor_file(layout, path))
    return checks


def _tensor_file(layout: RunLayout, path) -> FileCheck:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            n = sum(f.get_tensor(k).numel() for k in f.keys())
        return FileCheck(_rel(layout, path), True, f"{n:,} values")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        return FileCheck(_rel(layout, path), False, f"damaged ({str(e).splitlines()[0][:60]})",
                         f"rerun `icl-lab analyze {layout.root}`")
