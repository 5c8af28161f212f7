"""The stored evaluation set: `analyze` writes the tokens every measurement of a run used to
`RUN/analysis/eval_set.safetensors` with its fingerprint, and `ablate` (and any later measurement)
reads that very file back, so all of a run's numbers come from one set of tokens."""

from __future__ import annotations

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from icl_lab.errors import CheckpointError
from icl_lab.io import write_safetensors
from icl_lab.measure.evalset import EVAL_SEED, EvalSet, make_eval_set
from icl_lab.run.rundir import Run


def save_eval_set(run: Run, ev: EvalSet) -> None:
    """Write `ev` to RUN/analysis/eval_set.safetensors (atomically)."""
    write_safetensors(run.layout.eval_set,
                      {"tokens": ev.tokens, "ptl_positions": ev.ptl_positions, "repeated": ev.repeated, "random": ev.random},
                      metadata={"seg_len": str(ev.seg_len), "bos": "" if ev.bos is None else str(ev.bos),
                                "fingerprint": ev.fingerprint, "seed": str(EVAL_SEED)})


def load_eval_set(run: Run) -> EvalSet:
    """The evaluation set `analyze` stored for `run`, checked against its fingerprint.

    Raises:
        CheckpointError: the run has not been analysed, or the file is damaged.
    """
    path = run.layout.eval_set
    if not path.is_file():
        raise CheckpointError(f"{run.path} has no stored evaluation set; run `icl-lab analyze {run.path}` first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        ev = EvalSet(t["tokens"], t["ptl_positions"], t["repeated"], int(meta["seg_len"]), t["random"],
                     int(meta["bos"]) if meta.get("bos") else None)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}); rerun `icl-lab analyze {run.path}`") from None
    if ev.fingerprint != meta.get("fingerprint"):
        raise CheckpointError(f"{path} does not match its fingerprint; rerun `icl-lab analyze {run.path}`")
    return ev


def eval_set_for(run: Run, n_examples: int = 256, store: bool = False) -> EvalSet:
    """The stored evaluation set when it has `n_examples` examples, else a freshly made one (the
    same tokens, since both come from the run's data and EVAL_SEED), stored when `store`."""
    if run.layout.eval_set.is_file():
        ev = load_eval_set(run)
        if len(ev.tokens) == n_examples:
            return ev
    ev = make_eval_set(run, n_examples)
    if store:
        save_eval_set(run, ev)
    return ev
