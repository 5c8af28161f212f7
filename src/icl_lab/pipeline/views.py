"""What the report draws, computed once by the pipeline and stored, so the report never runs a
model: the attention viewer's patterns (every head, two sample sequences, up to
`VIEW_CHECKPOINTS` checkpoints spread on a log axis plus the phase window's edges) and the final
checkpoint's composition graph. `icl_lab.run.results` reads them back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from icl_lab.data.synthetic import sample_batch
from icl_lab.data.text import load_tokens, sample_windows
from icl_lab.io import write_json, write_safetensors
from icl_lab.kinds import organism
from icl_lab.measure.composition import BASELINE_SAMPLES, composition_baseline, composition_scores
from icl_lab.measure.evalset import EVAL_SEED, EvalSet
from icl_lab.measure.head_scores import attention_patterns, repeated_random_tokens
from icl_lab.pipeline.base import Context, Measurement, register
from icl_lab.run.results import attention_paths, composition_path
from icl_lab.run.rundir import Run

VIEW_POSITIONS = 64  # the attention viewer shows at most this many tokens per sample
VIEW_CHECKPOINTS = 16  # and this many checkpoints on its slider
EDGE_Z = 2.0  # a composition edge is drawn when its score is this many baseline stds above the mean


def view_steps(steps: Sequence[int], keep: Sequence[int] = (), n: int = VIEW_CHECKPOINTS) -> list[int]:
    """Up to `n` checkpoints spread evenly on a log axis (always the first and last), plus `keep`."""
    if len(steps) <= n:
        return list(steps)
    idx = np.unique(np.round(np.geomspace(1, len(steps), n)).astype(int) - 1)
    return sorted({steps[i] for i in idx} | {s for s in keep if s in steps})


def viewer_samples(run: Run) -> tuple[torch.Tensor, list[dict]]:
    """Two viewer sequences of equal length: repeated random tokens, and a sample of the run's
    data (for text runs, a validation window shown as decoded tokens). An organism's runs show
    the organism's own samples (`Organism.viewer_samples`) instead."""
    org = organism(run.config.data.kind)
    if org is not None and org.viewer_samples is not None:
        return org.viewer_samples(run)
    m = run.config.model
    n = min(m.n_ctx, VIEW_POSITIONS)
    rep, seg = repeated_random_tokens(m.d_vocab, n, n_repeats=3, n_examples=1, seed=EVAL_SEED)
    gen = torch.Generator().manual_seed(EVAL_SEED + 1)
    if run.config.data.kind == "text":
        ts = load_tokens(run.config.data, m.d_vocab)
        text = sample_windows(ts.val, n, 1, gen, bos=ts.bos).tokens
        name = f"validation text ({run.config.data.corpus}, {run.config.data.tokenizer} tokens)"
    else:
        text = sample_batch(run.config.data, m.d_vocab, n, 1, gen).tokens
        name = f"training-data sample ({run.config.data.kind})"
    length = min(rep.shape[1], text.shape[1])
    tokens = torch.cat([rep[:, :length], text[:, :length]])  # [sample, pos]
    tokenizer = run.tokenizer()
    if tokenizer is not None:
        labels = [tokenizer.token_strings(row) for row in tokens.tolist()]
    else:
        labels = [["BOS" if t == 0 and run.config.data.bos else str(t) for t in row] for row in tokens.tolist()]
    return tokens, [{"name": f"repeated random tokens (segment of {seg}, 3 copies)", "tokens": labels[0]},
                    {"name": name, "tokens": labels[1]}]


@register
class AttentionViewer(Measurement):
    """Every head's attention on the two viewer samples at up to `VIEW_CHECKPOINTS` checkpoints
    (plus `keep`, e.g. the phase window's edges), stored by `save` for the report's viewer."""

    fans_out = False  # `save` writes what `measure` collected across checkpoints
    name, description = "attention_viewer", "attention patterns for the report's viewer (stored, not tabled)"
    needs_eval_set = False

    def __init__(self, keep: Sequence[int] = ()) -> None:
        self.keep = tuple(keep)
        self.patterns: dict[int, np.ndarray] = {}

    def start(self, run: Run, ev: EvalSet | None, device: str | None, dtype: str | None) -> None:
        self.tokens, self.samples = viewer_samples(run)

    def wants(self, step: int, steps: Sequence[int]) -> bool:
        return step in view_steps(steps, self.keep)

    def measure(self, ctx: Context) -> list[dict]:
        pattern = attention_patterns(ctx.model, self.tokens)  # [layer, sample, head, query_pos, key_pos]
        self.patterns[ctx.step] = pattern.float().cpu().transpose(0, 1).mul(255).round().to(torch.uint8).numpy()
        return []

    def owns(self, metric: str) -> bool:
        return False

    def save(self, run: Run) -> None:
        """Write the patterns gathered so far (atomically), replacing the stored ones."""
        if not self.patterns:
            return
        steps = sorted(self.patterns)
        tensors, meta = attention_paths(run)
        per_step = run.config.train.batch_size * run.config.model.n_ctx
        write_safetensors(tensors, {"patterns": torch.from_numpy(np.stack([self.patterns[s] for s in steps]))})
        write_json(meta, {"steps": steps, "tokens": [s * per_step for s in steps], "samples": self.samples})


def composition_graph(model, step: int) -> dict:
    """Q/K/V-composition scores of `model` against their random baseline: every earlier-head ->
    later-head pair as an edge record, `drawn` when z >= EDGE_Z. Through the factored circuits,
    so GPT-2-sized models take seconds."""
    edges, baselines = [], {}
    for mode in ("q", "k", "v"):
        mean, std = composition_baseline(model, mode)
        baselines[mode] = {"mean": mean, "std": std}
        scores = composition_scores(model, mode).float().cpu().numpy()  # [layer_a, head_a, layer_b, head_b], NaN if not earlier
        for (la, ha, lb, hb), s in np.ndenumerate(scores):
            if np.isfinite(s):
                z = (s - mean) / std
                edges.append({"source": [la, ha], "target": [lb, hb], "mode": mode, "score": float(s),
                              "z": float(z), "drawn": bool(z >= EDGE_Z)})
    return {"step": step, "edges": edges, "baselines": baselines, "edge_z": EDGE_Z}


@register
class Composition(Measurement):
    """The final checkpoint's composition graph (multi-layer models only), stored by `save`."""

    fans_out = False  # `save` writes what `measure` collected across checkpoints
    name, description = "composition", "Q/K/V-composition graph of the final checkpoint (stored, not tabled)"
    needs_eval_set = False

    def __init__(self) -> None:
        self.graph: dict | None = None

    def wants(self, step: int, steps: Sequence[int]) -> bool:
        return step == steps[-1]

    def floor_bytes(self, cfg, ev: EvalSet | None, itemsize: int) -> int:
        """The random circuits of the baseline: 4 factors of [samples, d_model, d_head], float32, and their QR."""
        return 8 * BASELINE_SAMPLES * cfg.d_model * cfg.d_head * 4

    def measure(self, ctx: Context) -> list[dict]:
        if ctx.model.cfg.n_layers >= 2:
            self.graph = composition_graph(ctx.model, ctx.step)
        return []

    def owns(self, metric: str) -> bool:
        return False

    def save(self, run: Run) -> None:
        path = composition_path(run)
        if self.graph is not None:
            write_json(path, self.graph)
        else:
            path.unlink(missing_ok=True)  # one layer: nothing composes
