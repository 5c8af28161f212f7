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

    def reset_hooks(self) -> None:
        """Remove every attached hook (only needed after attaching by hand)."""
        for hp in self.hook_dict.values():
            hp.fns.clear()

    def run_with_hooks(self, tokens: Tensor, fwd_hooks: Sequence[HookSpec] = (), bwd_hooks: Sequence[HookSpec] = (),
                       **forward_kwargs) -> Tensor:
        """Run the model with temporary hooks; returns the forward's output (logits [batch, pos,
        d_vocab]). Backward hooks fire when you call `.backward()` on something computed from it.

        Args:
            tokens: [batch, pos] token ids.
            fwd_hooks, bwd_hooks: as in `hooks`.
            forward_kwargs: passed to the forward (`attention_mask`, `stop_at_layer`).

        Example:
            >>> grads = {}
            >>> logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.1.attn.hook_z", lambda g, hook: grads.update({hook.name: g}))])
            >>> logits[:, -1, 3].sum().backward()   # grads["blocks.1.attn.hook_z"]: [batch, pos, head, d_head]
        """
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(tokens, **forward_kwargs)

    def run_with_cache(self, tokens: Tensor, names_filter: NameFilter = None, **forward_kwargs) -> tuple[Tensor, ActivationCache]:
        """Run the model and record activations.

        Args:
            tokens: [batch, pos] token ids.
            names_filter: a hook name, a list of names, or a predicate; None caches everything
                except the per-head `attn.hook_result` ([batch, pos, head, d_model], built only
                when something asks for it by name or predicate).
            forward_kwargs: passed to the forward (`attention_mask`, `stop_at_layer`).

        Returns:
            logits [batch, pos, d_vocab] and an `ActivationCache` of detached activations, which
            knows the model (for its maths: `accumulated_resid`, `decompose_resid`, ...).
        """
        keep = _as_predicate(names_filter)
        store: dict[str, Tensor] = {}

        def save(x: Tensor, *, hook: HookPoint) -> None:
            store[hook.name] = x.detach()

        names = [n for n in self.hook_dict if keep(n)]
        with self.hooks([(n, save) for n in names]):
            logits = self(tokens, **forward_kwargs)
        return logits, ActivationCache(store, model=self)


def _backward(fn: HookFn) -> HookFn:
    """A forward hook that attaches `fn` to the gradient of the activation it sees."""

    def attach(x: Tensor, *, hook: HookPoint) -> None:
        if not x.requires_grad:
            raise ConfigError(f"backward hook on {hook.name}: the activation has no gradient; run outside "
                              "torch.no_grad() / inference_mode()")
        x.register_hook(lambda grad: fn(grad, hook=hook))

    return attach
