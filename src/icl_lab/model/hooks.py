"""Hook points and activation caches, with TransformerLens's names and semantics.

A `HookPoint` is an identity module wrapped around an activation worth studying. The root model
names each one by its dotted path (`blocks.1.attn.hook_pattern`), so names come from the module
tree. A hook is `fn(activation, *, hook) -> Tensor | None`; a returned tensor replaces the
activation. Hooks are temporary: `hooks(...)` removes them in a `finally`, because a broken hook
left attached would silently spoil every later run. Backward hooks `fn(grad, *, hook)` see (and may
replace) the gradient of the loss with respect to the activation. A hook point also honours
PyTorch's own module hooks (`register_forward_hook`, `register_forward_pre_hook`) and a patched
`forward` (nnsight installs one), so other tools can read and edit activations; with nothing
attached it costs a few attribute checks (it bypasses `nn.Module.__call__` and its dispatch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Union

from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from icl_lab.errors import ConfigError
from icl_lab.model.cache import ActivationCache, hook_name  # noqa: F401 - re-exported: the cache lived here

HookFn = Callable[..., Union[Tensor, None]]
HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]


class HookPoint(nn.Module):
    """Identity on an activation; attached hook functions may read or replace it.

    Attach hooks with `model.hooks(...)` (or append to `.fns`). PyTorch's `register_forward_hook`
    and `register_forward_pre_hook` work too (and tools built on them, or on replacing `forward`,
    such as nnsight): a hook point with any of them goes through `nn.Module.__call__`."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fns: list[HookFn] = []
        self.permanent: list[HookFn] = []  # attached with add_hook(..., is_permanent=True): reset_hooks keeps them
        self.ctx: dict = {}  # a hook's scratch space across runs (TransformerLens's hook.ctx); reset_hooks clears it

    def layer(self) -> int:
        """The block this hook point sits in (`blocks.3.attn.hook_z` -> 3).

        Raises:
            ConfigError: a hook point outside the blocks (embeddings, final norm).
        """
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ConfigError(f"{self.name} is not inside a block; it has no layer")
        return int(parts[1])

    @property
    def active(self) -> bool:
        """Whether any hook is attached, ours or PyTorch's (the model uses this to pick the fused
        attention path, which never builds the scores or pattern)."""
        return bool(self.fns) or self._torch_hooked()

    def _torch_hooked(self) -> bool:
        # PyTorch's hooks on this module or on every module, or a forward patched onto the instance
        return bool(self._forward_hooks or self._forward_pre_hooks or "forward" in self.__dict__
                    or _global_forward_hooks or _global_forward_pre_hooks)

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fns:
            out = fn(x, hook=self)
            if out is not None:
                x = out
        return x

    def __call__(self, x: Tensor) -> Tensor:  # skip nn.Module's dispatch unless a PyTorch hook needs it
        d = self.__dict__  # `_torch_hooked` inlined: this runs ~20 times per forward
        if d["_forward_hooks"] or d["_forward_pre_hooks"] or "forward" in d or _global_forward_hooks or _global_forward_pre_hooks:
            return super().__call__(x)
        return self.forward(x) if self.fns else x

    def extra_repr(self) -> str:
        return self.name


ON_REQUEST = ("attn.hook_result",)  # hook points that cost memory when active: cached only when named


def _as_predicate(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: not name.endswith(ON_REQUEST)
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


class HookedRootModule(nn.Module):
    """Mixin for a model whose submodules contain `HookPoint`s. Call `setup_hooks()` at the end of
    `__init__`."""

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def _resolve(self, name: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name):
            return [h for n, h in self.hook_dict.items() if name(n)]
        if name not in self.hook_dict:
            close = [n for n in self.hook_dict if n.endswith(name.split(".")[-1])][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else "; see model.hook_dict for the names"
            raise ConfigError(f"no hook point named {name!r}{hint}")
        return [self.hook_dict[name]]

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[HookSpec] = (), bwd_hooks: Sequence[HookSpec] = ()) -> Iterator["HookedRootModule"]:
        """Attach hooks for the duration of a `with` block; they are removed even on error.

        Args:
            fwd_hooks: (name or name-predicate, fn) pairs; fn(activation, *, hook) may return a
                replacement tensor.
            bwd_hooks: (name or name-predicate, fn) pairs; fn(grad, *, hook) runs when a backward
                pass reaches the activation's gradient and may return a replacement gradient.
                It fires for activations computed inside the block, even if `.backward()` is
                called after it.

        Raises:
            ConfigError: an unknown hook name.

        Example:
            >>> with model.hooks([("blocks.0.attn.hook_z", zero_head)]):
            ...     loss = model.loss(tokens)
        """
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            pairs = [*fwd_hooks, *((name, _backward(fn)) for name, fn in bwd_hooks)]
            for name, fn in pairs:
                for hp in self._resolve(name):
                    hp.fns.append(fn)
                    added.append((hp, fn))
            yield self
        finally:
            for hp, fn in reversed(added):
                hp.fns.remove(fn)

    @property
    def mod_dict(self) -> dict[str, nn.Module]:
        """Every submodule by its dotted name (TransformerLens's `mod_dict`)."""
        return dict(self.named_modules())

    def add_hook(self, name: str | Callable[[str], bool], hook: HookFn, dir: str = "fwd", is_permanent: bool = False) -> None:
        """Attach `hook` until `reset_hooks()` (or for good with `is_permanent`), as TransformerLens's
        `add_hook`; `dir="bwd"` attaches it to the activation's gradient. Prefer `hooks(...)`, which
        removes what it attached even on error.

        Raises:
            ConfigError: an unknown hook name or direction.
        """
        if dir not in ("fwd", "bwd"):
            raise ConfigError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        fn = hook if dir == "fwd" else _backward(hook)
        for hp in self._resolve(name):
            hp.fns.append(fn)
            if is_permanent:
                hp.permanent.append(fn)

    def reset_hooks(self, clear_contexts: bool = True, including_permanent: bool = False) -> None:
        """Remove every hook attached by hand (`add_hook`, `run_with_hooks(reset_hooks_end=False)`);
        permanent ones stay unless `including_permanent`; `clear_contexts` empties each `hook.ctx`."""
        for hp in self.hook_dict.values():
            if including_permanent:
                hp.permanent.clear()
            hp.fns[:] = [fn for fn in hp.fns if any(fn is p for p in hp.permanent)]
            if clear_contexts:
                hp.ctx.clear()

    def run_with_hooks(self, tokens: Tensor | str | list[str], fwd_hooks: Sequence[HookSpec] = (), bwd_hooks: Sequence[HookSpec] = (),
                       reset_hooks_end: bool = True, clear_contexts: bool = False, **forward_kwargs) -> Tensor:
        """Run the model with temporary hooks; returns the forward's output (logits [batch, pos,
        d_vocab]). Backward hooks fire when you call `.backward()` on something computed from it.

        Args:
            tokens: [batch, pos] token ids, a text or a list of texts.
            fwd_hooks, bwd_hooks: as in `hooks`.
            reset_hooks_end: False leaves the hooks attached after the run (remove them with
                `reset_hooks()`), as TransformerLens.
            clear_contexts: empty every `hook.ctx` after the run.
            forward_kwargs: passed to the forward (`return_type`, `attention_mask`, `stop_at_layer`, ...).

        Example:
            >>> grads = {}
            >>> logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.1.attn.hook_z", lambda g, hook: grads.update({hook.name: g}))])
            >>> logits[:, -1, 3].sum().backward()   # grads["blocks.1.attn.hook_z"]: [batch, pos, head, d_head]
        """
        if not reset_hooks_end:
            for name, fn in fwd_hooks:
                self.add_hook(name, fn)
            for name, fn in bwd_hooks:
                self.add_hook(name, fn, dir="bwd")
            return self(tokens, **forward_kwargs)
        try:
            with self.hooks(fwd_hooks, bwd_hooks):
                return self(tokens, **forward_kwargs)
        finally:
            if clear_contexts:
                self.reset_hooks(clear_contexts=True, including_permanent=False)

    def run_with_cache(self, tokens: Tensor | str | list[str], names_filter: NameFilter = None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, **forward_kwargs) -> tuple[Tensor | None, ActivationCache]:
        """Run the model and record activations.

        Args:
            tokens: [batch, pos] token ids, a text or a list of texts.
            names_filter: a hook name, a list of names, or a predicate; None caches everything
                except the per-head `attn.hook_result` ([batch, pos, head, d_model], built only
                when something asks for it by name or predicate).
            remove_batch_dim: store every activation without its batch axis (batch 1 only).
            incl_bwd: also run `.backward()` on the output (a scalar: pass `return_type="loss"`)
                and store each activation's gradient as `name + "_grad"`.
            forward_kwargs: passed to the forward (`return_type`, `attention_mask`, `stop_at_layer`, ...).

        Returns:
            the forward's output (logits [batch, pos, d_vocab]) and an `ActivationCache` of detached
            activations, which knows the model (for its maths: `accumulated_resid`, `decompose_resid`, ...).

        Raises:
            ConfigError: `incl_bwd` with an output that is not a scalar, or `remove_batch_dim` with a batch of more than one.
        """
        keep = _as_predicate(names_filter)
        store: dict[str, Tensor] = {}

        def save(x: Tensor, *, hook: HookPoint) -> None:
            store[hook.name] = x.detach()

        def save_grad(g: Tensor, *, hook: HookPoint) -> None:
            store[hook.name + "_grad"] = g.detach()

        names = [n for n in self.hook_dict if keep(n)]
        with self.hooks([(n, save) for n in names], [(n, save_grad) for n in names] if incl_bwd else ()):
            out = self(tokens, **forward_kwargs)
            if incl_bwd:
                if not isinstance(out, Tensor) or out.numel() != 1:
                    raise ConfigError("incl_bwd runs .backward() on the output, which must be a scalar; pass return_type='loss'")
                out.backward()
        cache = ActivationCache(store, model=self)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache


def _backward(fn: HookFn) -> HookFn:
    """A forward hook that attaches `fn` to the gradient of the activation it sees."""

    def attach(x: Tensor, *, hook: HookPoint) -> None:
        if not x.requires_grad:
            raise ConfigError(f"backward hook on {hook.name}: the activation has no gradient; run outside "
                              "torch.no_grad() / inference_mode()")
        x.register_hook(lambda grad: fn(grad, hook=hook))

    return attach
