"""The run directory: where a run's config, log and checkpoints live. One place defines the paths;
the trainer writes them and `icl_lab.run` reads them.

    RUN/
      .train.lock          held by the trainer while it trains (`icl_lab.train.lock`)
      config.json          ExperimentConfig (model, data, train, seed): alone it rebuilds the run
      meta.json            seed, library versions, data fingerprint (text: and tokenizer fingerprint,
                           BOS id; imports: tokenizer_source, bos_source), device, status
      train_log.jsonl      one JSON row per logged step: step, tokens, loss, loss_repeat, lr, tokens_per_s
      tokenizer.json       text runs only: the tokenizer (icl_lab.data.Tokenizer.load)
      checkpoints/
        step_0000000.safetensors   weights, optimiser state and data-RNG state, one file per step
      analysis/              written by the measurement pipeline (`icl-lab analyze`, icl_lab.pipeline)
        metrics.parquet      tidy table: run, step, tokens, metric, layer, head, position, value, baseline
        summary.json         phase change, ICL score, final head scores, induction heads
        before_after.json    the per-token-loss "before-and-after" vector of the phase change
        eval_set.safetensors the evaluation set every measurement of the run used (`ablate` reads it)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_RE = re.compile(r"step_(\d+)\.safetensors")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def lock(self) -> Path:
        return self.root / ".train.lock"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def metrics(self) -> Path:
        return self.analysis_dir / "metrics.parquet"

    @property
    def summary(self) -> Path:
        return self.analysis_dir / "summary.json"

    @property
    def before_after(self) -> Path:
        return self.analysis_dir / "before_after.json"

    @property
    def eval_set(self) -> Path:
        return self.analysis_dir / "eval_set.safetensors"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:07d}.safetensors"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, ascending (temporary files are ignored)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = (CHECKPOINT_RE.fullmatch(p.name) for p in self.checkpoint_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)
