"""The training loop: AdamW with warm-up, gradient clipping, dense log-spaced checkpoints and a
bit-identical `resume`. It writes a run directory (see `icl_lab.train.layout`) and returns its path;
progress goes to an optional callback, never to the terminal."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from icl_lab.data import TextStream, open_stream
from icl_lab.errors import CheckpointError, ConfigError, NonFiniteError
from icl_lab.io import write_json, write_text
from icl_lab.model.transformer import Transformer
from icl_lab.train.checkpoint import load_train_state, load_weights, save_checkpoint
from icl_lab.train.config import ExperimentConfig, TrainConfig
from icl_lab.train.layout import RunLayout
from icl_lab.train.schedule import checkpoint_steps, lr_at


@dataclass(frozen=True)
class StepRecord:
    """One training-log row, also passed to the progress callback at each logged step."""

    step: int
    tokens: int
    loss: float
    loss_repeat: float  # mean loss on targets predictable from context (NaN without such targets)
    lr: float
    tokens_per_s: float
    elapsed_s: float


Progress = Callable[[int, int, StepRecord | None], None]  # (step, total, latest logged record)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    return torch.device(name)


def derive_seed(seed: int, stream: str) -> int:
    """Independent seeds for independent random streams (init, data) from one run seed."""
    return (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(stream))) % 2**63


def build_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices and embeddings only, never on biases, norm
    gains or smearing logits."""
    matrices = {id(p) for p in model.weight_matrices()}
    decay = [p for p in model.parameters() if id(p) in matrices]
    no_decay = [p for p in model.parameters() if id(p) not in matrices]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel updates all parameters in one call: ~15% of a small model's step on CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("icl-lab", "numpy", "safetensors", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _prepare_dir(cfg: ExperimentConfig, layout: RunLayout, resume: bool) -> None:
    if layout.root.exists() and not layout.root.is_dir():
        raise ConfigError(f"--out {layout.root} is a file, not a directory; choose another --out")
    if layout.config.exists():
        if not resume:
            raise ConfigError(f"run directory {layout.root} already exists; pass --resume to continue it or choose another --out")
        stored = ExperimentConfig.load(layout.config)
        if stored != cfg:
            raise ConfigError(f"{layout.root} holds a run with a different config; resume it with its own config or choose another --out")
        return  # the stored config is this one: leave the file alone
    if layout.root.exists() and any(layout.root.iterdir()):
        raise ConfigError(f"{layout.root} exists and is not an icl-lab run directory; choose another --out")
    write_json(layout.config, cfg.model_dump(mode="json"))


def _is_complete(layout: RunLayout, steps: int) -> bool:
    saved = layout.checkpoint_steps()
    meta = json.loads(layout.meta.read_text()) if layout.meta.is_file() else {}
    return bool(saved) and saved[-1] >= steps and meta.get("status") == "complete"


def _check_same_data(layout: RunLayout, fingerprint: str) -> None:
    """Resuming must draw the same data the run started on (a changed corpus, tokenizer or BOS would not)."""
    before = json.loads(layout.meta.read_text()).get("data_fingerprint") if layout.meta.is_file() else None
    if before is not None and before != fingerprint:
        raise ConfigError(f"{layout.root} was trained on other data (corpus, tokenizer or BOS changed since, "
                          f"fingerprint {before} -> {fingerprint}); restore them or start a new run with another --out")


def _truncate_log(layout: RunLayout, step: int) -> None:
    if layout.log.exists():
        rows = [ln for ln in layout.log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        write_text(layout.log, "".join(r + "\n" for r in rows))


def fit(cfg: ExperimentConfig, out: str | Path, resume: bool = False, progress: Progress | None = None) -> Path:
    """Train `cfg` into the run directory `out`.

    Args:
        cfg: the whole experiment.
        out: run directory; created if missing. An existing run is continued only with `resume`.
        resume: continue from the latest checkpoint; the result is bit-identical to an
            uninterrupted run on the same machine and thread count.
        progress: called after every step as progress(step, total, latest_record).

    Returns:
        The run directory.

    Raises:
        ConfigError: the directory holds another run, or the config is inconsistent.
        CheckpointError: the latest checkpoint cannot be read.
        NonFiniteError: the loss became NaN or inf.
    """
    layout = RunLayout(Path(out))
    tc = cfg.train
    _prepare_dir(cfg, layout, resume)
    if resume and _is_complete(layout, tc.steps):
        return layout.root  # nothing left to train: keep meta.json's record of the machine that trained it
    device = resolve_device(tc.device)
    model = Transformer(cfg.model, seed=derive_seed(cfg.seed, "init")).to(device)
    optimizer = build_optimizer(model, tc)
    data = open_stream(cfg.data, cfg.model.d_vocab, cfg.model.n_ctx, tc.batch_size, derive_seed(cfg.seed, "data"))
    fingerprint, saved = data.fingerprint(derive_seed(cfg.seed, "data")), layout.checkpoint_steps()
    if resume and saved:  # before anything is written: the run's files stay as they were
        _check_same_data(layout, fingerprint)
    if isinstance(data, TextStream):  # the run decodes its own tokens without the cache
        data.tokens.tokenizer.save(layout.tokenizer)
    meta = {
        "seed": cfg.seed,
        "versions": library_versions(),
        "data_fingerprint": fingerprint,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    if isinstance(data, TextStream):  # what `check_eval_data` compares the evaluation text with
        meta |= {"tokenizer_fingerprint": data.tokens.tokenizer.fingerprint(), "bos_id": data.tokens.bos}
    step, tokens = 0, 0
    if resume and saved:
        state = load_train_state(layout.checkpoint(saved[-1]))
        model.load_state_dict(load_weights(layout.checkpoint(saved[-1])))
        try:
            optimizer.load_state_dict(state.optimizer)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimiser state in step_{state.step} does not fit this model ({e}); start a new run") from None
        data.set_state(state.data_rng)
        step, tokens = state.step, state.tokens
        if layout.meta.exists():
            meta["created"] = json.loads(layout.meta.read_text()).get("created", meta["created"])
        _truncate_log(layout, step)
    write_json(layout.meta, meta)

    schedule = set(checkpoint_steps(tc.steps, tc.n_checkpoints))
    if step == 0 and 0 not in saved:
        save_checkpoint(layout.checkpoint(0), model, optimizer, data.get_state(), 0, 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.dtype == "bf16")
    tokens_per_step = tc.batch_size * cfg.model.n_ctx
    # loss, repeat-loss sum, repeat count since the last log row; kept on the device so a GPU
    # step never waits for the host except at log steps
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    window_start, window_steps, t0 = time.perf_counter(), 0, time.perf_counter()
    record: StepRecord | None = None
    model.train()
    try:
        with layout.log.open("a") as log:
            while step < tc.steps:
                lr = lr_at(step, tc)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = data.next()
                tokens_in = batch.tokens.to(device, non_blocking=True)
                with autocast:
                    per_token = model.per_token_loss(tokens_in)  # [batch, pos-1]
                if batch.loss_mask is None:
                    loss = per_token.mean()
                else:  # only the marked targets (e.g. the answers of facts) are learned
                    weight = batch.loss_mask.to(device, non_blocking=True)
                    loss = (per_token * weight).sum() / weight.sum().clamp(min=1)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += tokens_per_step
                window_steps += 1
                with torch.no_grad():
                    mask = batch.repeat_mask.to(device)
                    sums += torch.stack([loss.detach(), (per_token.detach() * mask).sum(), mask.sum()]).double()
                if step % tc.log_every == 0 or step in schedule or step == tc.steps:
                    totals = sums.tolist()
                    mean_loss = totals[0] / window_steps
                    if not math.isfinite(mean_loss):
                        raise NonFiniteError(f"loss became {mean_loss} by step {step}; lower train.lr or lengthen train.warmup_steps")
                    now = time.perf_counter()
                    record = StepRecord(
                        step=step, tokens=tokens, loss=mean_loss,
                        loss_repeat=totals[1] / totals[2] if totals[2] > 0 else float("nan"),
                        lr=lr, tokens_per_s=window_steps * tokens_per_step / (now - window_start),
                        elapsed_s=now - t0,
                    )
                    log.write(json.dumps(asdict(record)) + "\n")
                    log.flush()
                    sums.zero_()
                    window_start, window_steps = now, 0
                if step in schedule:
                    save_checkpoint(layout.checkpoint(step), model, optimizer, data.get_state(), step, tokens)
                if progress is not None:
                    progress(step, tc.steps, record)
    except BaseException as e:  # Ctrl-C, a non-finite loss, a full disk: say so (only kill -9 leaves "running")
        reason = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        write_json(layout.meta, {**meta, "status": "stopped", "stop_reason": reason})
        raise
    write_json(layout.meta, {**meta, "status": "complete"})
    return layout.root


def ensure_trained(cfg: ExperimentConfig, out: str | Path, progress: Progress | None = None,
                   announce: Callable[[], None] | None = None) -> tuple[Path, bool]:
    """Train `cfg` into `out` unless a complete run of it is already there; resume an unfinished one.
    `announce` is called just before any training starts.

    Returns:
        (run directory, whether any training happened).

    Raises:
        ConfigError: `out` holds a run of a different experiment.
    """
    layout = RunLayout(Path(out))
    if layout.config.is_file():
        if ExperimentConfig.load(layout.config) != cfg:
            raise ConfigError(f"{layout.root} holds a different experiment; remove it or choose another --out")
        meta = json.loads(layout.meta.read_text()) if layout.meta.is_file() else {}
        if meta.get("status") == "complete":
            return layout.root, False
    if announce is not None:
        announce()
    return fit(cfg, layout.root, resume=layout.config.is_file(), progress=progress), True
