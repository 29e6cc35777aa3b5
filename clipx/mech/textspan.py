"""Attention heads described in words: TextSpan (Gandelsman et al., ICLR 2024).

A head's direct contribution to the image embedding (`clipx.decompose`) varies over images within a few
directions of the joint space. TextSpan names them with captions, greedily: centre the head's outputs over
the images, and the caption embeddings (normalised) over the bank (`text_directions`); pick the caption along which the outputs
vary most; project its direction out of the outputs and out of every caption; repeat.

A caption's score is the variance of the outputs along its remaining embedding, not renormalised after
earlier picks were projected out of it (the paper's Algorithm 1): a caption that earlier picks already
mostly say keeps little norm, so it is not picked to name a leftover direction it barely describes. Each
pick's share is what its unit direction takes of the head's total variance; the directions are orthonormal,
so a head's shares sum to the share of its variance that the span of its captions explains, at most 1.
The paper's code first projects the captions into the head's principal subspace; here a pick's direction
stays the caption's own (less what earlier picks took), so its share is what that caption explains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .decompose import Decomposition, decompose
from ..model.inputs import text_embeds
from ..errors import check_int
from ..model.clip import CLIP


@dataclass(repr=False)
class HeadDescription:
    """TextSpan's captions for one head, in the order picked. `shares[k]`: the share of `total_variance` (the
    head's output variance over the images, summed over the joint space's dimensions) along `directions[k]`,
    the unit direction of caption k once the earlier picks were projected out of it ([n, dim], orthonormal).
    `indices`: the captions' positions in the bank."""

    label: str
    captions: list[str]
    indices: list[int]
    shares: list[float]
    total_variance: float
    directions: torch.Tensor

    def __str__(self) -> str:
        lines = [f"{self.label}: variance {self.total_variance:.4g}, {sum(self.shares):.1%} of it "
                 f"in {len(self.captions)} captions"]
        return "\n".join(lines + [f"  {share:6.1%}  {caption}" for share, caption in zip(self.shares, self.captions)])

    def __repr__(self) -> str:  # the table, cut short: the full lists are its attributes
        lines = str(self).splitlines()
        return "\n".join(lines if len(lines) <= 20 else [*lines[:19], f"  ... {len(lines) - 19} more captions"])


def describe_heads(model: CLIP, images: Any, captions: list[str] | torch.Tensor,
                   layers: int | Iterable[int] | None = None, heads: int | Iterable[int] | None = None,
                   n_descriptions: int = 5) -> list[HeadDescription]:
    """TextSpan for each chosen head (every layer x head of `layers` x `heads`, all by default): the
    `n_descriptions` captions that best span its direct contributions to the image embeddings.

    images: PIL images, paths, arrays or pixel_values [B, 3, H, W] (at least 2: TextSpan reads variance
    over them), or a `Decomposition` of them to reuse. captions: the bank (`clipx.shapes.caption_bank()`
    for the demo), or its text embeddings [n_captions, dim]. `print(description)` gives a readable table."""
    parts = images if isinstance(images, Decomposition) else decompose(model, images)
    outputs = parts.heads()  # [n_images, n_layers, n_heads, dim]
    labels = [label for label in parts.labels if ".attn.head." in label]
    n_layers, n_heads = outputs.shape[1:3]
    layers, heads = _indices("layers", layers, n_layers), _indices("heads", heads, n_heads)
    embeds, names = _bank(model, captions)
    return [text_span(outputs[:, layer, head], embeds, n_descriptions, names, labels[layer * n_heads + head])
            for layer in layers for head in heads]


def text_span(outputs: torch.Tensor, embeds: torch.Tensor, n_descriptions: int = 5,
              captions: list[str] | None = None, label: str = "") -> HeadDescription:
    """TextSpan on one component's outputs [n_images, dim] against a bank's text embeddings [n_captions, dim]
    (see the module's docstring); `captions` names the bank's rows."""
    n_descriptions = check_int("n_descriptions", n_descriptions, minimum=1)
    if outputs.ndim != 2 or outputs.shape[0] < 2:
        raise ValueError(f"outputs must be [n_images, dim] with at least 2 images (TextSpan reads their variance), "
                         f"got shape {list(outputs.shape)}")
    if embeds.shape[-1] != outputs.shape[-1]:
        raise ValueError(f"text embeddings are {embeds.shape[-1]}-dimensional but the head outputs are "
                         f"{outputs.shape[-1]}-dimensional: pass the same model's captions or embeddings")
    if n_descriptions >= len(embeds):
        raise ValueError(f"n_descriptions={n_descriptions} but the bank has {len(embeds)} captions: centred "
                         f"over the bank they span at most {len(embeds) - 1} directions")
    data = outputs.double() - outputs.double().mean(0)
    texts = text_directions(embeds).double()
    total = data.square().sum() / (len(data) - 1)
    indices, shares, directions = [], [], []
    for _ in range(n_descriptions):
        pick = int((data @ texts.T).var(0).argmax())
        direction = F.normalize(texts[pick], dim=0)
        shares.append(float((data @ direction).var() / total.clamp_min(1e-300)))
        indices.append(pick)
        directions.append(direction)
        data = data - (data @ direction)[:, None] * direction
        texts = texts - (texts @ direction)[:, None] * direction
    names = captions if captions is not None else [f"text {i}" for i in range(len(embeds))]
    return HeadDescription(label, [names[i] for i in indices], indices, shares, float(total),
                           torch.stack(directions).to(outputs.dtype))


def text_directions(embeds: torch.Tensor) -> torch.Tensor:
    """A bank's text embeddings [n_captions, dim] as TextSpan starts from them: normalised, centred over the
    bank (what all its captions share says nothing about one image), normalised again so that every caption
    starts on equal terms."""
    unit = F.normalize(embeds, dim=-1)
    return F.normalize(unit - unit.mean(0), dim=-1)  # eps: a caption equal to the bank's mean stays zero


def variance_share(outputs: torch.Tensor, directions: torch.Tensor) -> float:
    """The share of the variance of `outputs` [n_images, dim] over the images that lies in the span of
    `directions` [k, dim] (any k vectors; e.g. `text_directions(...)` rows of a group of captions)."""
    data = outputs.double() - outputs.double().mean(0)
    u, s, _ = torch.linalg.svd(directions.double().T, full_matrices=False)
    basis = u[:, s > s.max() * 1e-6]  # an orthonormal basis of the span, dependent directions dropped
    return float((data @ basis).square().sum() / data.square().sum().clamp_min(1e-300))


def _bank(model: CLIP, captions: list[str] | torch.Tensor) -> tuple[torch.Tensor, list[str] | None]:
    """The bank's text embeddings [n_captions, dim] and its captions (None for embeddings given as such)."""
    if isinstance(captions, torch.Tensor):
        return text_embeds(model, captions), None
    if isinstance(captions, str):
        raise TypeError("captions must be a list of captions (a bank to choose from), got one string")
    captions = list(captions)
    if not captions:
        raise ValueError("captions is empty: pass a bank of captions, e.g. clipx.shapes.caption_bank()")
    return text_embeds(model, captions), captions


def _indices(name: str, value: int | Iterable[int] | None, n: int) -> list[int]:
    """Layer or head indices (negative from the end) -> [0, n), or an error naming `name`."""
    if value is None:
        return list(range(n))
    chosen = [check_int(name, v) for v in (value if isinstance(value, Iterable) else [value])]
    if not chosen:
        raise ValueError(f"{name} is empty: pass indices, or None for all {n}")
    bad = [v for v in chosen if not -n <= v < n]
    if bad:
        raise ValueError(f"{name} {bad} outside the {n} {name} of this tower (0 to {n - 1})")
    return [v % n for v in chosen]
