"""The training loop: AdamW with warm-up, gradient clipping, dense log-spaced checkpoints and a
bit-identical `resume`. It writes a run directory (see `icl_lab.train.layout`) and returns its path;
progress goes to an optional callback, never to the terminal. It holds the run's lock while it
trains, fsyncs each log row, and survives a kill -9 at any moment (`icl_lab.train.recovery`)."""

from __future__ import annotations

import contextlib
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
from icl_lab.io import TEMP_FILE, LineLog, clean_temp_files, write_json
from icl_lab.model.transformer import Transformer
from icl_lab.train.checkpoint import checkpoint_problem, load_train_state, load_weights, save_checkpoint
from icl_lab.train.config import ExperimentConfig, TrainConfig
from icl_lab.train.distributed import TokenLoss, World
from icl_lab.train.interventions import Held, parse
from icl_lab.train.layout import RunLayout
from icl_lab.train.lock import hold_run
from icl_lab.train.records import read_meta
from icl_lab.train.recovery import record_stop, resume_point, storage_error, truncate_log
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


def _check_out(layout: RunLayout) -> None:
    """Refuse an --out that is a file, or a folder holding anything but a run (checked before the
    lock file is put there)."""
    if layout.root.exists() and not layout.root.is_dir():
        raise ConfigError(f"--out {layout.root} is a file, not a directory; choose another --out")
    if layout.config.exists() or not layout.root.exists():
        return
    if any(p != layout.lock and not TEMP_FILE.fullmatch(p.name) for p in layout.root.iterdir()):
        raise ConfigError(f"{layout.root} exists and is not an icl-lab run directory; choose another --out")


def _prepare_dir(cfg: ExperimentConfig, layout: RunLayout, resume: bool) -> None:
    if layout.config.exists():
        if not resume:
            raise ConfigError(f"run directory {layout.root} already exists; pass --resume to continue it or choose another --out")
        stored = ExperimentConfig.load(layout.config)
        if not stored.same_run(cfg):
            raise ConfigError(f"{layout.root} holds a run with a different config; resume it with its own config or choose another --out")
        return  # the stored config is this one: leave the file alone
    # where it trains is not part of the experiment (`same_run`): config.json stays portable, and
    # meta.json records the device that trained it
    write_json(layout.config, cfg.replace(train={"device": "auto"}).model_dump(mode="json"))


def _is_complete(layout: RunLayout, steps: int) -> bool:
    """Finished, with every checkpoint whole (a damaged one makes `--resume` retrain and rewrite it)."""
    saved = layout.checkpoint_steps()
    if not saved or saved[-1] < steps or read_meta(layout.meta).get("status") != "complete":
        return False
    return all(checkpoint_problem(layout.checkpoint(s)) is None for s in saved)


def _check_same_data(layout: RunLayout, fingerprint: str, legacy: tuple[str, ...] = ()) -> None:
    """Resuming must draw the same data the run started on (a changed corpus, tokenizer or BOS would
    not); `legacy` are the fingerprints an earlier icl-lab wrote for this same data."""
    before = read_meta(layout.meta).get("data_fingerprint")
    if before is not None and before != fingerprint and before not in legacy:
        raise ConfigError(f"{layout.root} was trained on other data (corpus, tokenizer or BOS changed since, "
                          f"fingerprint {before} -> {fingerprint}); restore them or start a new run with another --out")


@dataclass(frozen=True)
class Fork:
    """Where a branch starts (`icl_lab.train.branch`): the parent run's directory and the step of
    the checkpoint it continues from, with everything that checkpoint holds (weights, optimiser
    state, data position), so the branch sees exactly the batches the parent saw after it."""

    parent: Path
    step: int
    intervention: str | None = None  # a spec of `icl_lab.train.interventions`, held from the fork
    until: int | None = None  # the step at which it is released (None: held to the end)

    def record(self) -> dict:
        return {"run": str(self.parent), "step": self.step, "intervention": self.intervention, "until": self.until}


def fit(cfg: ExperimentConfig, out: str | Path, resume: bool = False, progress: Progress | None = None,
        fork: Fork | None = None) -> Path:
    """Train `cfg` into the run directory `out`.

    A resume starts from the newest checkpoint that reads back whole (`recovery.resume_point`,
    which warns about any damaged one it passes over), removes temporary files a killed write
    left, and drops a log line cut off mid-write (with an `IclLabWarning`).

    Args:
        cfg: the whole experiment.
        out: run directory; created if missing. An existing run is continued only with `resume`.
        resume: continue from the latest checkpoint; the result is bit-identical to an
            uninterrupted run on the same machine and thread count.
        progress: called after every step as progress(step, total, latest_record).
        fork: start from another run's checkpoint instead of from scratch (`branch`).

    Under torchrun (WORLD_SIZE > 1 in the environment) every process calls `fit` and they train
    data-parallel (`icl_lab.train.distributed`): rank 0 holds the lock and writes the directory.

    Returns:
        The run directory.

    Raises:
        ConfigError: the directory holds another run, or the config is inconsistent.
        RunInUseError: another trainer is training this run directory now.
        CheckpointError: the checkpoint to resume from does not fit the model, or holds weights only.
        CorruptFileError: meta.json or a line of the log before the last is damaged.
        NonFiniteError: the loss became NaN or inf.
        StorageError: a file could not be written (a full disk); meta.json records it and every
            earlier checkpoint is intact.
    """
    layout = RunLayout(Path(out))
    _check_out(layout)
    if resume and layout.config.is_file() and ExperimentConfig.load(layout.config).same_run(cfg) and _is_complete(layout, cfg.train.steps):
        return layout.root  # nothing left to train: keep meta.json's record of the machine that trained it
    world = World.from_env()
    with world.joined(world.device(resolve_device(cfg.train.device))):  # torchrun's group, destroyed at the end
        if not world.is_main:  # under torchrun: rank 0 holds the lock and owns the directory; the others only train
            return _train(cfg, layout, resume, progress, world, fork)
        try:
            with hold_run(layout):
                clean_temp_files(layout.root)  # only a trainer holding the lock writes in these two folders
                clean_temp_files(layout.checkpoint_dir)
                _prepare_dir(cfg, layout, resume)
                return _train(cfg, layout, resume, progress, world, fork)
        except OSError as e:  # before training started (config.json, tokenizer.json): nothing to record
            raise storage_error(e, layout) from None


def _train(cfg: ExperimentConfig, layout: RunLayout, resume: bool, progress: Progress | None, world: World,
           fork: Fork | None = None) -> Path:
    tc = cfg.train
    if resume and _is_complete(layout, tc.steps):
        return layout.root
    device = world.device(resolve_device(tc.device))  # the group is joined (`fit`)
    world.check_batch(tc.batch_size)
    model = Transformer(cfg.model, seed=derive_seed(cfg.seed, "init")).to(device)
    loss_fn = world.wrap(TokenLoss(model))  # the loss goes through forward, where DDP arms its gradient sync
    if tc.compile:  # forward and backward fused by inductor; the first step pays the compile
        for block in model.blocks:  # a masked softmax inductor can fuse, not the opaque SDPA kernel
            block.attn.explicit = True
        loss_fn = compiled(loss_fn)
    optimizer = build_optimizer(model, tc)
    data = open_stream(cfg.data, cfg.model.d_vocab, cfg.model.n_ctx, tc.batch_size, derive_seed(cfg.seed, "data"))
    fingerprint = data.fingerprint(derive_seed(cfg.seed, "data"))
    start = resume_point(layout) if resume and world.is_main else None
    if start is not None:  # before anything is written: the run's files stay as they were
        legacy = data.legacy_fingerprints(derive_seed(cfg.seed, "data")) if hasattr(data, "legacy_fingerprints") else ()
        _check_same_data(layout, fingerprint, legacy)
    start = world.broadcast(start)  # every rank resumes from the checkpoint rank 0 picked
    if isinstance(data, TextStream) and world.is_main:  # the run decodes its own tokens without the cache
        data.tokens.tokenizer.save(layout.tokenizer)
    meta = {
        "seed": cfg.seed,
        "versions": library_versions(),
        "data_fingerprint": fingerprint,
        "device": str(device),
        "threads": torch.get_num_threads(),
        **({"world_size": world.size} if world.size > 1 else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    if isinstance(data, TextStream):  # what `check_eval_data` compares the evaluation text with
        meta |= {"tokenizer_fingerprint": data.tokens.tokenizer.fingerprint(), "bos_id": data.tokens.bos}
    if fork is not None:
        meta["parent"] = fork.record()
    step, tokens = 0, 0
    if start is not None:
        step, tokens = _restore(layout.checkpoint(start), model, optimizer, data)
    elif fork is not None:  # a new branch: the parent's checkpoint, then the branch's own first checkpoint
        step, tokens = _restore(RunLayout(fork.parent).checkpoint(fork.step), model, optimizer, data, partial=cfg.model.smeared_key)
    held = Held(parse(fork.intervention), model, fork.until) if fork is not None and fork.intervention else None
    if resume and world.is_main:
        meta["created"] = read_meta(layout.meta).get("created", meta["created"])
        truncate_log(layout, step)
    if world.is_main:
        write_json(layout.meta, meta)

    schedule = set(checkpoint_steps(tc.steps, tc.n_checkpoints))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.dtype == "bf16")
    tokens_per_step = tc.batch_size * cfg.model.n_ctx
    # loss, repeat-loss sum, repeat count since the last log row; kept on the device so a GPU
    # step never waits for the host except at log steps
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    window_start, window_steps, t0 = time.perf_counter(), 0, time.perf_counter()
    record: StepRecord | None = None
    model.train()
    try:
        if start is None and world.is_main:  # a fresh run (or branch), or every checkpoint damaged
            save_checkpoint(layout.checkpoint(step), model, optimizer, data.get_state(), step, tokens)
        with LineLog(layout.log) if world.is_main else contextlib.nullcontext() as log:  # rows flushed at once, fsynced in the background
            while step < tc.steps:
                lr = lr_at(step, tc)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if held is not None:
                    held.before(step)
                batch = data.next()  # the global batch: every rank draws it and trains on its own rows
                tokens_in = world.rows(batch.tokens).to(device, non_blocking=True)
                with autocast:
                    per_token = loss_fn(tokens_in)  # [batch / world, pos-1]
                loss = _loss(per_token, batch, world, device, held.weight(batch.repeat_mask, step) if held else None)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                if held is not None:
                    held.after(step)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += tokens_per_step
                window_steps += 1
                with torch.no_grad():
                    mask = world.rows(batch.repeat_mask).to(device)
                    sums += torch.stack([loss.detach(), (per_token.detach() * mask).sum(), mask.sum()]).double()
                if step % tc.log_every == 0 or step in schedule or step == tc.steps:
                    totals = world.sum(sums).tolist()
                    mean_loss = totals[0] / window_steps / world.size
                    if not math.isfinite(mean_loss):
                        raise NonFiniteError(f"loss became {mean_loss} by step {step}; lower train.lr or lengthen train.warmup_steps")
                    now = time.perf_counter()
                    record = StepRecord(
                        step=step, tokens=tokens, loss=mean_loss,
                        loss_repeat=totals[1] / totals[2] if totals[2] > 0 else float("nan"),
                        lr=lr, tokens_per_s=window_steps * tokens_per_step / (now - window_start),
                        elapsed_s=now - t0,
                    )
                    if world.is_main:
                        log.append(json.dumps(asdict(record)))
                    sums.zero_()
                    window_start, window_steps = now, 0
                if step in schedule and world.is_main:
                    log.sync()  # the log is durable up to this checkpoint before the checkpoint exists
                    save_checkpoint(layout.checkpoint(step), model, optimizer, data.get_state(), step, tokens)
                if progress is not None:
                    progress(step, tc.steps, record)
    except BaseException as e:  # Ctrl-C, a non-finite loss, a full disk: say so (only kill -9 leaves "running")
        err = storage_error(e, layout) if isinstance(e, OSError) else e
        reason = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
        if world.is_main:
            record_stop(layout, meta, reason)
        if err is e:
            raise
        raise err from None
    if world.is_main:
        write_json(layout.meta, {**meta, "status": "complete"})
    return layout.root


def _loss(per_token: torch.Tensor, batch, world: World, device: torch.device, mask: torch.Tensor | None) -> torch.Tensor:
    """The step's loss: the mean per-token loss, or over the marked targets only (the batch's loss
    mask, e.g. the answers of facts, times an intervention's mask), normalised by the global count."""
    weight = batch.loss_mask if mask is None else (mask if batch.loss_mask is None else batch.loss_mask * mask)
    if weight is None:  # equal slices: DDP's mean of the ranks' means is the global mean
        return per_token.mean()
    rows = world.rows(weight).to(device, non_blocking=True)
    return (per_token * rows).sum() / weight.sum().clamp(min=1).to(device) * world.size


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(module)`, or a one-line error when it cannot compile here (no C++ compiler
    for inductor on CPU, an unsupported platform)."""
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
        raise ConfigError("train.compile needs a C++ compiler for torch.compile on this machine; install g++ "
                          "or train with --no-compile")
    return torch.compile(module)


def _restore(path: Path, model: Transformer, optimizer: torch.optim.Optimizer, data, partial: bool = False) -> tuple[int, int]:
    """Load a checkpoint's weights, optimiser state and data position; returns (step, tokens).
    `partial`: the model has parameters the checkpoint lacks (a branch that switched smeared keys
    on): those keep their initial values and start with a fresh optimiser state."""
    state = load_train_state(path)
    try:
        weights = load_weights(path)
        if partial and set(weights) != set(model.state_dict()):
            _restore_partial(model, optimizer, weights, state.optimizer)
        else:
            model.load_state_dict(weights)
            optimizer.load_state_dict(state.optimizer)
        data.set_state(state.data_rng)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path.name} does not fit this model ({str(e).splitlines()[0][:80]}); start a new run") from None
    return state.step, state.tokens


def _restore_partial(model: Transformer, optimizer: torch.optim.Optimizer, weights: dict, opt_state: dict) -> None:
    """Weights and optimiser state of a checkpoint into a model with more parameters (new ones keep
    their initial values and a fresh optimiser state), matched by parameter name."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.endswith("smear_alpha") for k in missing):
        raise CheckpointError(f"the checkpoint does not fit the branch's model (missing {missing[:2]}, extra {unexpected[:2]})")
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    before = {n: i for i, n in enumerate(n for n in order if n in weights)}  # the parent's parameter indices
    current = optimizer.state_dict()
    current["state"] = {i: opt_state["state"][before[n]] for i, n in enumerate(order) if n in before and before[n] in opt_state["state"]}
    for group, old in zip(current["param_groups"], opt_state["param_groups"]):
        group.update({k: v for k, v in old.items() if k != "params"})
    optimizer.load_state_dict(current)


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
        if not ExperimentConfig.load(layout.config).same_run(cfg):
            raise ConfigError(f"{layout.root} holds a different experiment; remove it or choose another --out")
        if read_meta(layout.meta).get("status") == "complete":
            return layout.root, False
    if announce is not None:
        announce()
    return fit(cfg, layout.root, resume=layout.config.is_file(), progress=progress), True
