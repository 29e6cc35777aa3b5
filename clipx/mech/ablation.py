"""Interventions on a model's parts: ablation (zero, mean or resampled outputs) and activation patching
(another input's outputs), for attention heads and MLPs of either tower, at every position or chosen ones.

A part is named as `clipx.decompose` labels it: `vision.blocks.3.attn.head.2` (what the head writes
through out_proj: its slice of `attn.hook_z`) or `text.blocks.1.mlp` (`hook_mlp_out`). Every forward inside
the block sees the new values and later layers see them too: these are total effects, indirect paths
included. The direct path alone is `Decomposition.ablated`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import check_int
from ..model.hooks import Cache
from ..model.inputs import prepare_images
from ..model.clip import CLIP

MODES = ("zero", "mean", "resample")
_PART = re.compile(r"^(vision|text)\.blocks\.(-?\d+)\.(?:attn\.head\.(-?\d+)|(mlp))$")


@dataclass(frozen=True)
class Site:
    """Where a part's output is: a hook point and, for a head, its index on the head axis of hook_z."""

    hook: str
    head: int | None

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        """The part's output in the hook's activation: [batch, pos, d_head] or [batch, pos, d_model]."""
        return activation if self.head is None else activation[:, :, self.head]


def sites(model: CLIP, parts: Iterable[str] | str) -> list[Site]:
    """Part labels -> their sites, negative indices resolved; an error names a label that is malformed or
    outside the model."""
    parts = [parts] if isinstance(parts, str) else list(parts)
    if not parts:
        raise ValueError("no parts given: pass labels such as 'vision.blocks.3.attn.head.2' or 'text.blocks.0.mlp'")
    out = []
    for part in parts:
        match = _PART.match(part) if isinstance(part, str) else None
        if match is None:
            raise ValueError(f"{part!r} is not a part label: use '{{tower}}.blocks.{{layer}}.attn.head.{{head}}' or "
                             "'{tower}.blocks.{layer}.mlp', tower 'vision' or 'text' (clipx.decompose's labels)")
        tower, layer, head, mlp = match.groups()
        n_layers, n_heads = model._tower(tower).n_layers, model._tower(tower).n_heads
        layer = int(layer)
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"{part!r}: layer {layer} is outside the {tower} tower's {n_layers} layers")
        prefix = f"{tower}.blocks.{layer % n_layers}"
        if mlp:
            out.append(Site(f"{prefix}.hook_mlp_out", None))
            continue
        if not -n_heads <= int(head) < n_heads:
            raise ValueError(f"{part!r}: head {head} is outside the {n_heads} heads of each {tower} layer")
        out.append(Site(f"{prefix}.attn.hook_z", int(head) % n_heads))
    return list(dict.fromkeys(out))


def head_labels(model: CLIP, heads: Iterable[tuple[int, int]], tower: str = "vision") -> list[str]:
    """(layer, head) pairs -> part labels, or an error naming the pair that is not one."""
    labels = []
    for pair in heads:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"heads holds (layer, head) pairs, got {pair!r}")
        layer, head = check_int("layer", pair[0]), check_int("head", pair[1])
        labels.append(f"{tower}.blocks.{layer}.attn.head.{head}")
    if not labels:
        raise ValueError("no heads to ablate: pass (layer, head) pairs")
    return labels


@contextmanager
def ablate(model: CLIP, parts: Iterable[str] | str, mode: str = "zero", reference: Any = None,
           positions: Iterable[int] | None = None, seed: int = 0) -> Iterator[CLIP]:
    """Inside the block, each part writes zero (mode="zero"), its mean output over the reference inputs
    (mode="mean": per position where the lengths agree, else over positions too), or the output of a
    reference input drawn at random for each item and each part (mode="resample": item i of any forward
    in the block gets the draw that `seed`, the part and i make, whatever the batch holds around it and
    however many forwards ran before). reference: the inputs of one forward (`{"pixel_values": px}`, `{"input_ids": ...}`),
    for vision parts images as `clipx.explain` takes them, or a `Cache` recorded from them that holds the
    parts' hooks. positions: only these token positions
    (0 is an image's class token), else all. Only this thread's forwards are affected, as with `model.hooks`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen = sites(model, parts)
    if mode == "zero":
        with _replacing(model, chosen, lambda site, x: torch.zeros((), dtype=x.dtype), positions):
            yield model
        return
    if reference is None:
        raise ValueError(f"mode={mode!r} needs reference inputs, e.g. reference={{'pixel_values': px}}")
    recorded = _record(model, chosen, reference)
    if mode == "mean":
        means = {site: values.mean(0) for site, values in recorded.items()}  # once, not on every forward

        def value(site: Site, x: torch.Tensor) -> torch.Tensor:
            return _fit(means[site], x.shape[1])
    else:
        seed, part = check_int("seed", seed, minimum=0), {site: k for k, site in enumerate(chosen)}

        def value(site: Site, x: torch.Tensor) -> torch.Tensor:
            source = _same_length(recorded[site], x, "resample-ablation")
            # row i's draw from (seed, part, i) alone: not from a generator the batch's other rows and the
            # block's earlier forwards would have advanced
            rows = [np.random.default_rng([seed, part[site], i]).integers(len(source)) for i in range(x.shape[0])]
            return source[torch.tensor(rows, device=source.device)]
    with _replacing(model, chosen, value, positions):
        yield model


@contextmanager
def ablate_heads(model: CLIP, heads: Iterable[tuple[int, int]], tower: str = "vision", mode: str = "zero",
                 reference: Any = None, positions: Iterable[int] | None = None) -> Iterator[CLIP]:
    """`ablate` for (layer, head) pairs of one tower."""
    with ablate(model, head_labels(model, heads, tower), mode, reference, positions) as ablated:
        yield ablated


@contextmanager
def patch(model: CLIP, parts: Iterable[str] | str, source: Any,
          positions: Iterable[int] | None = None) -> Iterator[CLIP]:
    """Activation patching: inside the block, each part writes what it wrote for the `source` inputs (one
    forward's inputs, or images): item i of a forward gets source item i, or the single source item when
    there is one. positions: only these token positions, else all."""
    chosen = sites(model, parts)
    recorded = _record(model, chosen, source)

    def value(site: Site, x: torch.Tensor) -> torch.Tensor:
        values = _same_length(recorded[site], x, "patching")
        if len(values) not in (1, x.shape[0]):
            raise ValueError(f"the source holds {len(values)} inputs but this forward {x.shape[0]}: pass one "
                             "source input, or as many as the patched forward runs")
        return values
    with _replacing(model, chosen, value, positions):
        yield model


def run_inputs(model: CLIP, inputs: Any) -> dict[str, torch.Tensor]:
    """Inputs for `model(**inputs)`: a dict as it is, images (PIL, paths, pixel_values) as pixel_values."""
    if isinstance(inputs, dict):
        return inputs

    return {"pixel_values": prepare_images(model, inputs)[0]}


def _record(model: CLIP, chosen: list[Site], inputs: Any) -> dict[Site, torch.Tensor]:
    """Each site's output for the inputs, or read from a `Cache` recorded before (one recording serves many
    ablations, as in a sweep)."""
    if isinstance(inputs, Cache):
        missing = sorted({site.hook for site in chosen} - set(inputs))
        if missing:
            raise ValueError(f"the reference cache holds no {missing[0]!r}: record it, e.g. "
                             f"model.recording({missing!r})")
        return {site: site.read(inputs[site.hook]) for site in chosen}
    inputs = run_inputs(model, inputs)
    towers = {site.hook.split(".")[0] for site in chosen}
    given = {"vision": "pixel_values", "text": "input_ids"}
    missing = [tower for tower in towers if given[tower] not in inputs]
    if missing:
        raise ValueError(f"the reference or source inputs hold no {given[missing[0]]}, which the "
                         f"{missing[0]} parts need; they hold {sorted(inputs)}")
    with torch.no_grad(), model.recording(sorted({site.hook for site in chosen})) as cache:
        model(**inputs)
    return {site: site.read(cache[site.hook]) for site in chosen}


@contextmanager
def _replacing(model: CLIP, chosen: list[Site], value: Callable[[Site, torch.Tensor], torch.Tensor],
               positions: Iterable[int] | None) -> Iterator[None]:
    """Hooks that write value(site, the part's current output) over each site's output, at `positions`."""
    if positions is not None:
        positions = [check_int("position", p) for p in positions]
        if not positions:
            raise ValueError("positions is empty: pass token positions, or None for all of them")
    by_hook: dict[str, list[Site]] = {}
    for site in chosen:
        by_hook.setdefault(site.hook, []).append(site)

    def hook_for(group: list[Site]):
        def hook(activation: torch.Tensor, point) -> torch.Tensor:
            activation = activation.clone()
            at = slice(None) if positions is None else _check_positions(positions, activation.shape[1])
            for site in group:
                current = site.read(activation)  # a view: writing it writes the activation
                current[:, at] = value(site, current).to(current.dtype).expand_as(current)[:, at]
            return activation
        return hook

    with model.hooks(fwd_hooks=[(name, hook_for(group)) for name, group in by_hook.items()]):
        yield


def _check_positions(positions: list[int], n: int) -> list[int]:
    if not all(-n <= p < n for p in positions):
        raise ValueError(f"positions {positions} reach outside this input's {n} tokens")
    return positions


def _same_length(values: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    if values.shape[1] != x.shape[1]:
        raise ValueError(f"{what} needs inputs of the same length: the reference has {values.shape[1]} tokens, "
                         f"this forward {x.shape[1]}")
    return values


def _fit(mean: torch.Tensor, n: int) -> torch.Tensor:
    """A mean over reference positions for an input with `n` positions: per position where the lengths
    agree, else the mean over positions too."""
    return mean if mean.shape[0] == n else mean.mean(0)
