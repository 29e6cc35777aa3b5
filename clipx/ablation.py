"""Ablating attention heads: a head's output (its slice of `hook_z`, what it writes through out_proj)
replaced by zero or by its mean over reference inputs, for every forward inside the block.

This is the total-effect ablation: later layers see the ablated value too, so indirect paths through
them change as well (the direct path alone is what `clipx.decompose` takes apart).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from .explain.core import check_int
from .model import CLIP

MODES = ("zero", "mean")


def _heads(model: CLIP, tower: str, heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """{layer: [head, ...]} with negative indices resolved, or an error naming the bad pair."""
    blocks = model._tower(tower).blocks
    n_layers, n_heads = len(blocks), blocks[0].attn.num_heads
    chosen: dict[int, list[int]] = {}
    for pair in heads:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"heads holds (layer, head) pairs, got {pair!r}")
        layer, head = check_int("layer", pair[0]), check_int("head", pair[1])
        if not (-n_layers <= layer < n_layers and -n_heads <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is outside the {tower} tower's {n_layers} layers x "
                             f"{n_heads} heads")
        chosen.setdefault(layer % n_layers, []).append(head % n_heads)
    if not chosen:
        raise ValueError("no heads to ablate: pass (layer, head) pairs")
    return chosen


@contextmanager
def ablate_heads(model: CLIP, heads: Iterable[tuple[int, int]], tower: str = "vision", mode: str = "zero",
                 reference: dict[str, torch.Tensor] | None = None) -> Iterator[CLIP]:
    """Inside the block, each (layer, head) of `tower` writes zero (mode="zero") or its mean output over
    the reference inputs (mode="mean": `reference` is the inputs of one forward, e.g.
    `{"pixel_values": px}`, averaged over the batch and, per position, over it). Only this thread's
    forwards are affected, as with `model.hooks`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen = _heads(model, tower, heads)
    names = {layer: f"{tower}.blocks.{layer}.attn.hook_z" for layer in chosen}
    means = {}
    if mode == "mean":
        if not reference:
            raise ValueError("mode='mean' needs reference inputs, e.g. reference={'pixel_values': px}")
        with torch.no_grad(), model.recording(list(names.values())) as cache:
            model(**reference)
        means = {layer: cache[name].mean(0) for layer, name in names.items()}  # [pos, head, d_head]

    def replace(layer: int):
        def hook(z: torch.Tensor, point) -> torch.Tensor:
            z = z.clone()
            for head in chosen[layer]:
                z[:, :, head] = 0 if mode == "zero" else _fit(means[layer][:, head], z.shape[1])
            return z
        return hook

    with model.hooks(fwd=[(names[layer], replace(layer)) for layer in chosen]):
        yield model


def _fit(mean: torch.Tensor, n: int) -> torch.Tensor:
    """A mean over reference positions for an input with `n` positions: per position where the lengths
    agree, else the mean over positions too."""
    return mean if mean.shape[0] == n else mean.mean(0)
