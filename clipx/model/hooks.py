"""Named hook points, scoped hooks and `run_with_cache` (in the spirit of TransformerLens).

Every activation the model computes passes through a `HookPoint`, an identity module with a
stable dotted name (`vision.blocks.3.attn.hook_pattern`). A hook is `fn(tensor, hook)`; a
tensor it returns replaces the activation (ablation, patching). Backward hooks see the
gradient flowing into the activation and may replace it too.

Hooks belong to the thread that attached them (to its `contextvars` context, so also to an
asyncio task): a forward sees the hooks its own thread attached, never another's. Two threads
can then explain, ablate or record with one model at once without seeing each other's hooks.
A thread pool that should run under the caller's hooks runs its work through
`contextvars.copy_context().run`.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any, Union

import torch
from torch import nn

from ..errors import check_grad_possible

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
# A name, a glob ("vision.blocks.*.attn.hook_pattern"), a list of names, or a predicate on names.
NameFilter = Union[str, Iterable[str], Callable[[str], bool], None]

# Per hook point, its (forward, backward) hooks in this context. Never mutated in place: attaching or
# removing sets a new mapping, so a context copied into another thread keeps a consistent snapshot.
Attached = Mapping["HookPoint", tuple[tuple[HookFn, ...], tuple[HookFn, ...]]]
_ATTACHED: ContextVar[Attached] = ContextVar("clipx_attached_hooks", default={})
_NONE: tuple[tuple[HookFn, ...], tuple[HookFn, ...]] = ((), ())
_KINDS = {"fwd": 0, "bwd": 1}
# hook names renamed to TransformerLens' spelling; the old ones still resolve, with a DeprecationWarning
RENAMED = {"hook_scores": "hook_attn_scores"}


def _renamed(name: str) -> str:
    """`name` (or a glob) with a renamed hook's old spelling replaced by the new one, with a warning."""
    parts = name.split(".")
    for old in RENAMED.keys() & set(parts):
        warnings.warn(f"the hook name {old!r} is now {RENAMED[old]!r} (TransformerLens' name): {name!r} "
                      f"still works but will not in the next release", DeprecationWarning, stacklevel=4)
    return ".".join(RENAMED.get(p, p) for p in parts)


def _renamed_filter(names: NameFilter) -> NameFilter:
    """A name filter with old hook names renamed; a predicate is the caller's own and stays as it is."""
    if names is None or callable(names):
        return names
    return _renamed(names) if isinstance(names, str) else [_renamed(n) for n in names]


def _deprecated_keyword(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of keyword `new`, or of its deprecated spelling `old` (not both)."""
    if old_value is None:
        return new_value
    if new_value:
        raise TypeError(f"give {new}= only: {old}= is its old name")
    warnings.warn(f"{old}= is now {new}= (TransformerLens' name); {old}= will go in the next release",
                  DeprecationWarning, stacklevel=4)
    return old_value


class HookPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # set by HookedModule once the tree is built

    @property
    def fwd_hooks(self) -> tuple[HookFn, ...]:
        """The forward hooks attached in this thread."""
        return _ATTACHED.get().get(self, _NONE)[0]

    @property
    def bwd_hooks(self) -> tuple[HookFn, ...]:
        return _ATTACHED.get().get(self, _NONE)[1]

    @property
    def active(self) -> bool:
        return self in _ATTACHED.get()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd, bwd = _ATTACHED.get().get(self, _NONE)
        for fn in fwd:
            out = fn(x, self)
            if out is not None:
                x = out
        if bwd and x.requires_grad:
            # the hooks are bound now: backward may run in another thread, with another context
            x.register_hook(partial(_run_bwd_hooks, bwd, self))
        return x

    def extra_repr(self) -> str:
        return self.name


def _run_bwd_hooks(hooks: tuple[HookFn, ...], point: HookPoint, grad: torch.Tensor) -> torch.Tensor:
    for fn in hooks:
        out = fn(grad, point)
        if out is not None:
            grad = out
    return grad


def _attach(point: HookPoint, kind: str, fn: HookFn) -> None:
    attached = dict(_ATTACHED.get())
    hooks = list(attached.get(point, _NONE))
    hooks[_KINDS[kind]] = (*hooks[_KINDS[kind]], fn)
    attached[point] = tuple(hooks)
    _ATTACHED.set(attached)


def _detach(point: HookPoint, kind: str, fn: HookFn) -> None:
    """Remove one attachment of `fn` (the latest), if it is still there (reset_hooks may have run)."""
    attached = dict(_ATTACHED.get())
    hooks = list(attached.get(point, _NONE))
    fns = list(hooks[_KINDS[kind]])
    for i in range(len(fns) - 1, -1, -1):
        if fns[i] is fn:
            del fns[i]
            break
    else:
        return
    hooks[_KINDS[kind]] = tuple(fns)
    if any(hooks):
        attached[point] = tuple(hooks)
    else:
        del attached[point]
    _ATTACHED.set(attached)


def _matcher(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if callable(names):
        return names
    if isinstance(names, str):
        names = [names]
    patterns = list(names)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Cache(dict):
    """Activations by hook name; gradients under `name + "_grad"` (TransformerLens' convention)."""

    def __missing__(self, name: str) -> torch.Tensor:
        renamed = _renamed(name)
        if renamed == name:
            raise KeyError(name)
        return self[renamed]

    def grad(self, name: str) -> torch.Tensor:
        return self[name + "_grad"]

    def activations(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.items() if not k.endswith("_grad")}

    def __repr__(self) -> str:
        """Names and shapes, each hook's blocks on one line (`vision.blocks.{0-11}.attn.hook_pattern`), at
        most `REPR_LINES` lines: the tensors themselves are `cache[name]`."""
        groups: dict[str, tuple[list[int], set[tuple[int, ...]]]] = {}
        for name, value in self.items():
            match = _BLOCK_INDEX.search(name)
            key = name if match is None else name[:match.start(1)] + "{}" + name[match.end(1):]
            blocks, shapes = groups.setdefault(key, ([], set()))
            if match is not None:
                blocks.append(int(match.group(1)))
            shapes.add(tuple(value.shape) if isinstance(value, torch.Tensor) else ())
        n_grads = sum(k.endswith("_grad") for k in self)
        lines = [f"Cache of {len(self) - n_grads} activations and {n_grads} gradients:"]
        for key, (blocks, shapes) in groups.items():
            name = key.format(_span(blocks)) if blocks else key
            shape = str(list(next(iter(shapes)))) if len(shapes) == 1 else "shapes differ by block"
            lines.append(f"  {name}: {shape}")
        if len(lines) > REPR_LINES:
            hidden = len(lines) - REPR_LINES + 1
            lines = lines[:REPR_LINES - 1] + [f"  ... and {hidden} more (list(cache) names them all)"]
        return "\n".join(lines)


REPR_LINES = 20
_BLOCK_INDEX = re.compile(r"\.blocks\.(\d+)\.")


def _span(blocks: list[int]) -> str:
    """{0-11} for consecutive blocks, {0,3,7} otherwise."""
    blocks = sorted(set(blocks))
    if len(blocks) > 2 and blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{{{blocks[0]}-{blocks[-1]}}}"
    return "{" + ",".join(map(str, blocks)) + "}"


class HookedModule(nn.Module):
    """Mixin for the root module: finds, names and manages its hook points."""

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_names(self) -> list[str]:
        return list(self._hook_points)

    def hook_point(self, name: str) -> HookPoint:
        try:
            return self._hook_points[_renamed(name)]
        except KeyError:
            raise KeyError(f"no hook point named {name!r}; model.hook_names() lists them") from None

    def _resolve(self, names: NameFilter) -> list[HookPoint]:
        names = _renamed_filter(names)
        if isinstance(names, str) and not any(c in names for c in "*?["):
            return [self.hook_point(names)]
        if isinstance(names, (list, tuple)) and not names:
            return []
        match = _matcher(names)
        points = [p for n, p in self._hook_points.items() if match(n)]
        if not points:
            raise KeyError(f"no hook point matches {names!r}; model.hook_names() lists them")
        return points

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (),
              bwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), *,
              fwd: Iterable[tuple[NameFilter, HookFn]] | None = None,
              bwd: Iterable[tuple[NameFilter, HookFn]] | None = None) -> Iterator["HookedModule"]:
        """Attach hooks for the duration of the block, for forwards this thread runs; they are
        removed on exit, also on error. `fwd_hooks` / `bwd_hooks`: (name filter, fn) pairs, as in
        TransformerLens (`fwd=` / `bwd=` are their deprecated spellings)."""
        fwd_hooks = _deprecated_keyword("fwd", "fwd_hooks", fwd, fwd_hooks)
        bwd_hooks = _deprecated_keyword("bwd", "bwd_hooks", bwd, bwd_hooks)
        added: list[tuple[HookPoint, str, HookFn]] = []
        try:
            for pairs, kind in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for names, fn in pairs:
                    for point in self._resolve(names):
                        _attach(point, kind, fn)
                        added.append((point, kind, fn))
            yield self
        finally:
            for point, kind, fn in reversed(added):
                _detach(point, kind, fn)

    def reset_hooks(self) -> None:
        """Remove every hook this thread attached to this model."""
        own = set(self._hook_points.values())
        _ATTACHED.set({p: h for p, h in _ATTACHED.get().items() if p not in own})

    @contextmanager
    def recording(self, names_filter: NameFilter = None, requires_grad: bool = False) -> Iterator[Cache]:
        """Fill a Cache with the activations at the hook points `names_filter` selects while the block runs.

        With `requires_grad`, an activation that does not require grad (frozen weights, or inside
        `torch.no_grad()` turned off by the caller) is swapped for a leaf that does: the first
        recorded activation in each tower, so gradients reach every recorded activation after it.
        """
        cache = Cache()

        def record(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            if requires_grad and not x.requires_grad:
                x = x.detach().requires_grad_(True)
            cache[hook.name] = x
            return x

        with self.hooks(fwd_hooks=[(p.name, record) for p in self._resolve(names_filter)]):
            yield cache

    def run_with_cache(self, *args: Any, names_filter: NameFilter = None,
                       objective: Callable[[Any], torch.Tensor] | None = None,
                       detach: bool = True, names: NameFilter = None, **kwargs: Any) -> tuple[Any, Cache]:
        """Run the model, recording the activations at the hook points `names_filter` selects (a name, a
        glob, a list of them or a predicate, as in TransformerLens; `names=` is its deprecated spelling).

        With `objective` (a function of the outputs that returns a scalar), the cache also holds
        the gradient of that scalar with respect to every recorded activation, under
        `name + "_grad"`. This works inside `torch.no_grad()` and on frozen weights.
        """
        names_filter = _deprecated_keyword("names", "names_filter", names, names_filter)
        want_grad = objective is not None
        if want_grad:
            check_grad_possible("run_with_cache(objective=...)")
        with torch.set_grad_enabled(want_grad or torch.is_grad_enabled()), \
                self.recording(names_filter, requires_grad=want_grad) as cache:
            out = self(*args, **kwargs)
            if want_grad:
                target = objective(out)
                if not isinstance(target, torch.Tensor) or target.numel() != 1:
                    raise ValueError("objective must return a scalar tensor, e.g. "
                                     "lambda out: out.logits_per_image[0, 0]")
                recorded = list(cache.items())
                grads = torch.autograd.grad(target, [v for _, v in recorded], allow_unused=True)
                for (name, value), g in zip(recorded, grads):
                    cache[name + "_grad"] = torch.zeros_like(value) if g is None else g
        if detach:
            for k in cache:
                cache[k] = cache[k].detach()
        return out, cache
