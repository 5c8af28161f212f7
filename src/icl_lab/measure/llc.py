"""The local learning coefficient (LLC) of a checkpoint, estimated with devinterp's SGLD sampler.

For a model at weights w0 with empirical loss L_n, the LLC estimate is

    λ̂ = nβ · (E_w[L_n(w)] − L_n(w0)),   w ~ exp(−nβ·L_n(w) − γ/2·|w − w0|²)

the expected loss increase under a tempered posterior localised at w0 (Lau et al. 2023). A regular
model with d parameters has λ = d/2; degenerate directions lower it. Restricting the sampler to one
attention head's weights (the rest fixed) gives that head's refined LLC (Wang et al. 2024).

devinterp (`pip install 'icl-lab[devinterp]'`) runs the chains; this module gives it icl-lab's
per-token loss, the tokens, the settings, and reads the per-step loss trace back to judge each
estimate: a chain that is still drifting at its end, a negative estimate, chains that disagree, or
a chain that gave back most of what training learned (it left the basin) are named, not hidden.

    >>> est = llc(run.model(step=500), tokens, SGLDSettings(lr=1e-4, gamma=1000), heads=True)
    >>> est.value, est.health()["ok"], est.heads[(1, 0)].value
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from icl_lab._config import FrozenConfig
from icl_lab.errors import ConfigError

LossFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (model, input_ids [batch, pos]) -> [batch, pos-1]

# What a healthy estimate looks like (docs/llc.md, "Calibration"): no trend in the loss over the
# trace after its first pass that both moves the estimate by more than 10% and stands 3 standard
# errors from flat, chains within 20% of each other, and the chain giving back at most half of
# what training gained over the uniform prediction.
MAX_DRIFT = 0.1
MAX_SPREAD = 0.2
MAX_GIVE_BACK = 0.5
MIN_GAIN = 0.1  # nats: the give-back denominator's floor, for checkpoints still at the uniform loss
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086)  # Student's t 97.5% points, 1-20 degrees of freedom (then 2.086: conservative)
MIN_TREND_T = 3.0  # a drift is a trend this many standard errors from flat (about 95% with the 3 degrees of freedom of 200 draws)
MIN_SCALE = 1.0  # chains' spread is relative to the estimate, or to 1 below it: ±0.01 on an LLC of 0.03 is no disagreement
# A head's refined LLC has its own check (issue #27): its values are small (0.03-12 on synthetic-2l), so
# spread and drift count relative to the estimate down to 0.1, not 1; and its chains may give back at
# most half of what the head itself contributes, the loss rise when its output is zeroed (floored at
# 0.01 nats), not half of what the whole model gained over the uniform prediction, which no single
# head's chain could come near.
HEAD_SCALE = 0.1
HEAD_MIN_GAIN = 0.01
HEAD_SEQUENCES = 256  # sequences the head's contribution is measured on


class SGLDSettings(FrozenConfig):
    """How one LLC estimate is sampled (devinterp's `sample` arguments, by their paper names).

    Attributes:
        lr: SGLD step size ε.
        nbeta: inverse temperature nβ; None: n / log n, n the predicted tokens in one SGLD batch;
            "sequences": devinterp's default, n / log n with n the sequences in one batch.
        gamma: localisation strength γ (the pull back to the checkpoint's weights).
        chains, draws, burnin: chains, draws per chain, and steps dropped at each chain's start.
        batch_size: sequences per SGLD step.
        seed: devinterp's `init_seed` (chain k uses seed + k).
    """

    lr: float = Field(1e-4, gt=0)
    nbeta: float | Literal["sequences"] | None = None
    gamma: float = Field(1000.0, ge=0)
    chains: int = Field(4, ge=1)
    draws: int = Field(200, ge=4)
    burnin: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    seed: int = 0

    def resolved_nbeta(self, n_pos: int) -> float:
        """nβ for sequences of `n_pos` tokens: the setting, or n / log n for the batch's n predicted tokens."""
        if self.nbeta == "sequences":  # devinterp's `default_nbeta`: per sequence, not per token
            n = self.batch_size
            return n / math.log(n) if n > 1 else 1.0
        if self.nbeta is not None:
            if self.nbeta <= 0:
                raise ConfigError(f"nbeta must be positive, got {self.nbeta}")
            return float(self.nbeta)
        n = self.batch_size * max(1, n_pos - 1)
        return n / math.log(n) if n > 1 else 1.0


@dataclass(frozen=True)
class LLCEstimate:
    """One LLC estimate and the evidence to judge it.

    Attributes:
        value: the mean over chains of nβ·(mean sampled loss − initial loss).
        per_chain: the estimate of each chain.
        init_loss: the loss at the checkpoint's weights (mean over the initial batches).
        trace: [chain, step] mean sampled loss at every SGLD step after burn-in.
        nbeta: the inverse temperature used.
        reference_loss: the loss of a uniform prediction (log d_vocab), None if unknown; for a
            head's estimate, the loss with that head's output zeroed.
        heads: (layer, head) -> the head's refined LLC, when asked for.
        epoch: SGLD steps per pass over the data (the batches repeat in this order), for the drift test.
        scale: the floor under the estimate that spread and drift are relative to (1; 0.1 for a head).
        min_gain: the floor of the give-back denominator (0.1 nats; 0.01 for a head).
    """

    value: float
    per_chain: list[float]
    init_loss: float
    trace: np.ndarray
    nbeta: float
    reference_loss: float | None = None
    heads: dict[tuple[int, int], "LLCEstimate"] = field(default_factory=dict)
    epoch: int | None = None
    scale: float = MIN_SCALE
    min_gain: float = MIN_GAIN

    @property
    def std(self) -> float:
        """Sample standard deviation of the estimate across chains (ddof 1)."""
        return float(np.std(self.per_chain, ddof=1)) if len(self.per_chain) > 1 else 0.0

    def interval(self) -> tuple[float, float]:
        """95% interval of the mean over chains (Student's t, chains - 1 degrees of freedom);
        the estimate itself for one chain."""
        n = len(self.per_chain)
        if n < 2:
            return self.value, self.value
        half = T975[min(n - 1, len(T975)) - 1] * self.std / np.sqrt(n)
        return self.value - half, self.value + half

    def health(self) -> dict[str, Any]:
        """The diagnostics of docs/llc.md: drift, spread, give-back, positivity; `ok` and `problems`."""
        if not np.isfinite(self.trace).all() or not np.isfinite(self.per_chain).all():
            return {"drift": float("nan"), "drift_t": float("nan"), "spread": float("nan"), "give_back": None,
                    "excess_loss": float("nan"), "ok": False, "problems": ["a chain diverged (non-finite loss); lower ε"]}
        mean = self.trace.mean(axis=0)  # [step]
        excess = float(mean.mean() - self.init_loss)
        change, t = self._trend()
        drift = abs(change) * self.nbeta / max(abs(self.value), self.scale)  # in units of the estimate (or of the floor)
        spread = self.std / max(abs(self.value), self.scale)
        gain = None if self.reference_loss is None else max(self.reference_loss - self.init_loss, self.min_gain)
        give_back = None if gain is None else excess / gain
        problems = []
        if min(self.per_chain) <= 0:
            problems.append("a chain's estimate is not positive (the checkpoint is not at a local minimum at this ε, or ε is too small)")
        if drift > MAX_DRIFT and abs(t) > MIN_TREND_T:
            problems.append(f"the loss trace still drifts ({drift:.0%} of the estimate over the trace after its first pass; "
                            "more draws or a larger ε)")
        if spread > MAX_SPREAD:
            problems.append(f"chains disagree (spread {spread:.0%} of the estimate)")
        if give_back is not None and give_back > MAX_GIVE_BACK:
            problems.append(f"the chain gave back {give_back:.0%} of the loss training gained (it left the basin; larger γ or nβ)")
        return {"drift": drift, "drift_t": t, "spread": spread, "give_back": give_back, "excess_loss": excess,
                "ok": not problems, "problems": problems}

    def _trend(self) -> tuple[float, float]:
        """(the fitted change of the chains' mean loss over the trace after its first block, the
        slope's t-statistic). Blocks are whole passes over the data (as many as make at most about
        eight blocks) when the trace holds at least four passes (devinterp's default `epoch_mode="cycle"`
        replays its first shuffled pass, so every block sees the same batches), else quarters; the first
        block is dropped as the chains' relaxation. The t-statistic comes from the blocks' scatter
        about the line, which also holds the noise the chains share through their common batches."""
        mean = self.trace.mean(axis=0)
        n = len(mean)
        if self.epoch and n >= 4 * self.epoch:  # whole passes, at most ~8 blocks (one step is a pass at full batch)
            w = self.epoch * max(1, math.ceil(n / 8 / self.epoch))
        else:
            w = max(1, n // 4)
        blocks = mean[: (n // w) * w].reshape(-1, w).mean(axis=1)[1:]  # [block]
        if len(blocks) < 2:
            return 0.0, 0.0
        x = np.arange(len(blocks), dtype=float)
        slope, intercept = np.polyfit(x, blocks, 1)
        resid = blocks - (slope * x + intercept)
        dof = len(blocks) - 2
        se = np.sqrt((resid @ resid) / dof / ((x - x.mean()) @ (x - x.mean()))) if dof > 0 else 0.0
        t = float(slope / se) if se > 0 else (float("inf") if slope else 0.0)
        return float(slope * (len(blocks) - 1)), t


class TokenDataset(torch.utils.data.Dataset):
    """[example, pos] token ids as the `{"input_ids": ...}` rows devinterp's sampler reads."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens.long().cpu()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i]}


def token_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """icl-lab's per-token cross-entropy [batch, pos-1], the loss the model was trained on."""
    return model.per_token_loss(input_ids)


def sample_llc(model: torch.nn.Module, tokens: torch.Tensor, settings: SGLDSettings, loss_fn: LossFn = token_loss,
               param_masks: dict[str, torch.Tensor | None] | None = None, reference_loss: float | None = None) -> LLCEstimate:
    """Run devinterp's SGLD chains on `model` around its current weights and estimate the LLC.

    Works for any module and per-token loss (the known-answer tests use a linear regression whose
    "tokens" index the data). The model is not changed: devinterp samples on copies.

    Args:
        model: the module at the weights to measure.
        tokens: [example, pos] int rows fed to `loss_fn` in batches of `settings.batch_size`.
        settings: the SGLD settings.
        loss_fn: (model, rows [batch, pos]) -> per-position loss [batch, pos-1].
        param_masks: devinterp's parameter masks (None: every parameter samples).
        reference_loss: the uniform prediction's loss, for the give-back diagnostic.

    Raises:
        ConfigError: devinterp is missing, or there are fewer rows than one batch.
    """
    slt = _devinterp()
    if len(tokens) < settings.batch_size:
        raise ConfigError(f"{len(tokens)} sequences for the LLC are fewer than one SGLD batch ({settings.batch_size}); "
                          "lower --batch-size or use more sequences")
    nbeta = settings.resolved_nbeta(tokens.shape[-1])
    device = str(next(model.parameters()).device)
    with tempfile.TemporaryDirectory(prefix="icl-lab-llc-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stderr(io.StringIO()):  # devinterp's per-chain tqdm bars; the caller shows progress
        warnings.simplefilter("ignore")
        samples = slt.sample(model, TokenDataset(tokens), {}, lr=settings.lr, n_beta=nbeta, localization=settings.gamma,
                             param_masks=param_masks, num_chains=settings.chains, num_draws=settings.draws,
                             num_burnin_steps=settings.burnin, batch_size=settings.batch_size,
                             init_seed=settings.seed, loss_fn=loss_fn, device=device, output_path=f"{tmp}/samples.zarr")
        ds = samples.dataset
        init = float(ds.init_loss.values.mean())
        trace = ds.sampling_loss_micro.mean(dim=["batch_sampling", "token_pos"]).values[:, settings.burnin:]  # [chain, step]
    trace = np.asarray(trace, dtype=np.float64)
    per_chain = [float(nbeta * (row.mean() - init)) for row in trace]
    return LLCEstimate(float(np.mean(per_chain)), per_chain, init, trace, nbeta, reference_loss,
                       epoch=len(tokens) // settings.batch_size)


def head_masks(model: torch.nn.Module, layer: int, head: int) -> dict[str, torch.Tensor | None]:
    """devinterp's parameter masks for one head: its slices of W_Q, W_K, W_V, W_O and their biases
    (icl-lab's weights have TransformerLens's names and `[head, ...]` layout)."""
    from devinterp.slt.weight_restrictions import create_param_masks

    return create_param_masks(model, f"l{layer}h{head}")


def llc(model: torch.nn.Module, tokens: torch.Tensor, settings: SGLDSettings | None = None, heads: bool = False) -> LLCEstimate:
    """The LLC of an icl-lab `Transformer` at its current weights, on `tokens` from its training
    distribution, optionally with every head's refined LLC in `.heads`.

    Args:
        model: the checkpoint (`run.model(step)`).
        tokens: [example, pos] sequences (at least one SGLD batch).
        settings: SGLD settings (default `SGLDSettings()`; calibrate them: `icl-lab llc --calibrate`).
        heads: also estimate each head's LLC with the sampler restricted to that head's weights.
    """
    settings = settings or SGLDSettings()
    reference = math.log(model.cfg.d_vocab)
    est = sample_llc(model, tokens, settings, reference_loss=reference)
    if not heads:
        return est
    per_head = {}
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            e = sample_llc(model, tokens, settings, param_masks=head_masks(model, layer, h))
            gain = head_contribution(model, tokens[:HEAD_SEQUENCES], layer, h)
            per_head[(layer, h)] = replace(e, reference_loss=e.init_loss + gain, scale=HEAD_SCALE, min_gain=HEAD_MIN_GAIN)
    return LLCEstimate(est.value, est.per_chain, est.init_loss, est.trace, est.nbeta, reference, per_head, est.epoch)


@torch.no_grad()
def head_contribution(model: torch.nn.Module, tokens: torch.Tensor, layer: int, head: int) -> float:
    """How much one head lowers the loss: the mean per-token loss with its output zeroed minus the
    clean loss, in nats (the scale a head's SGLD chain is judged against for leaving its basin)."""
    def zero(z, hook):
        z[:, :, head] = 0.0
        return z

    clean = float(model.per_token_loss(tokens).mean())
    with model.hooks([(f"blocks.{layer}.attn.hook_z", zero)]):
        ablated = float(model.per_token_loss(tokens).mean())
    return ablated - clean


def _devinterp() -> Any:
    try:
        import devinterp.slt.sampling as sampling
    except ImportError:
        raise ConfigError("the LLC needs devinterp; install it with `pip install 'icl-lab[devinterp]'`") from None
    return sampling
