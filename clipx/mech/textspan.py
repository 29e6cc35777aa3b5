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

`protocol="paper"` reproduces the paper's code (yossigandelsman/clip_text_span: `prs_hook.py` for the
head outputs, `replace_with_iterative_removal` in `compute_complete_text_set.py` for the picks) on the same
weights, where clipx's default ("clipx") chooses differently, for these reasons:
- the bank: the paper scores unit caption embeddings, uncentred, projected onto the span of the head's top
  `rank` (80) right singular vectors of its uncentred outputs. clipx centres the bank (what every caption
  shares, "a photo of", says nothing about one image; uncentred, that shared direction is picked wherever a
  head's outputs vary along it) and keeps each caption's own direction. `describe_heads` takes the rank as
  the model's head width (the rank of a head's W_OV, which the paper's 80 is for ViT-H/14).
- the final LayerNorm: the paper gives each of the 2L + 1 residual parts (embedding, L attention layers,
  L MLPs), and each head within a layer, an even share of the residual's mean and of the norm's bias, adds
  out_proj's bias / heads to each head, and divides every part by the image embedding's norm. clipx takes
  each part's own mean (the norm's exact linearisation: a part that is constant stays constant), keeps
  the biases as parts of their own and leaves the embedding's norm in (decompose's parts sum to the
  embedding, not to its unit vector).
The greedy step is the same in both: pick by variance over the images, project out, repeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .decompose import Decomposition, decompose
from ..model.inputs import encode_images, prepare_images, text_embeds
from ..model.towers import refuse
from ..errors import check_int
from ..model.clip import CLIP

PROTOCOLS = ("clipx", "paper")
PAPER_RANK = 80  # compute_complete_text_set.py's --w_ov_rank default (ViT-H/14's head width)


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
                   n_descriptions: int = 5, protocol: str = "clipx") -> list[HeadDescription]:
    """TextSpan for each chosen head (every layer x head of `layers` x `heads`, all by default): the
    `n_descriptions` captions that best span its direct contributions to the image embeddings.

    images: PIL images, paths, arrays or pixel_values [B, 3, H, W] (at least 2: TextSpan reads variance
    over them), or a `Decomposition` of them to reuse (protocol "clipx" only). captions: the bank
    (`clipx.shapes.caption_bank()` for the demo), or its text embeddings [n_captions, dim]. protocol:
    "clipx" or "paper" (the paper's code; the module docstring says how they differ and why).
    `print(description)` gives a readable table."""
    protocol = _check_protocol(protocol)
    if protocol == "paper":
        if isinstance(images, Decomposition):
            raise ValueError("protocol='paper' takes images, not a Decomposition: its head outputs need the "
                             "final LayerNorm's mean and the embedding's norm, which a Decomposition does not keep")
        outputs, labels = paper_head_outputs(model, images)
    else:
        parts = images if isinstance(images, Decomposition) else decompose(model, images)
        outputs = parts.heads()  # [n_images, n_layers, n_heads, dim]
        labels = [label for label in parts.labels if ".attn.head." in label]
    n_layers, n_heads = outputs.shape[1:3]
    layers, heads = _indices("layers", layers, n_layers), _indices("heads", heads, n_heads)
    embeds, names = _bank(model, captions)
    rank = model.vision.blocks[0].attn.head_dim  # the paper's W_OV rank: a head writes from d_head dimensions
    return [text_span(outputs[:, layer, head], embeds, n_descriptions, names, labels[layer * n_heads + head],
                      protocol, rank) for layer in layers for head in heads]


@torch.no_grad()
def paper_head_outputs(model: CLIP, images: Any) -> tuple[torch.Tensor, list[str]]:
    """Every vision head's direct contribution to each image's unit embedding as the paper's `prs_hook.py`
    takes it ([n_images, n_layers, n_heads, dim], and the heads' labels): the head's output at the class
    token plus out_proj's bias / heads, less the residual's mean / ((2L + 1) heads), times the final norm's
    gain over its std, plus its bias / ((2L + 1) heads), projected, over the embedding's norm."""
    tower = model._tower("vision")
    refuse(tower.cannot_decompose(), "TextSpan cannot take this image embedding apart")
    pixel_values, _ = prepare_images(model, images)
    blocks = [f"vision.blocks.{i}" for i in range(tower.n_layers)]
    names = [f"{b}.attn.hook_z" for b in blocks] + [f"{blocks[-1]}.hook_resid_post"]
    with model.recording(names) as cache:
        embeds = encode_images(model, pixel_values).float()
    residual = cache[names[-1]][:, 0].float()  # the class token, which the readout reads
    readout = tower.linear_readout(residual)
    if not readout.centred or readout.norm.weight is None:
        raise ValueError("protocol='paper' follows the paper's CLIP: a final LayerNorm with a gain, which this "
                         f"model's vision tower does not have ({type(readout.norm).__name__})")
    n_parts = 2 * tower.n_layers + 1  # the embedding, each attention layer, each MLP
    mean = residual.mean(-1)[:, None, None]
    outputs = []
    for block, name in zip(tower.blocks, blocks):
        attn = block.attn
        heads = attn.head_results(cache[f"{name}.attn.hook_z"][:, 0].float())  # [n_images, head, d]
        share = n_parts * attn.num_heads
        if attn.out_proj.bias is not None:
            heads = heads + attn.out_proj.bias.float() / attn.num_heads
        heads = (heads - mean / share) * readout.norm.weight.float() / readout.scale[:, None, None]
        if readout.norm.bias is not None:
            heads = heads + readout.norm.bias.float() / share
        outputs.append(heads if readout.proj is None else heads @ readout.proj.weight.float().T)
    labels = [f"{name}.attn.head.{h}" for name, block in zip(blocks, tower.blocks)
              for h in range(block.attn.num_heads)]
    return torch.stack(outputs, 1) / embeds.norm(dim=-1)[:, None, None, None], labels


def text_span(outputs: torch.Tensor, embeds: torch.Tensor, n_descriptions: int = 5,
              captions: list[str] | None = None, label: str = "", protocol: str = "clipx",
              rank: int = PAPER_RANK) -> HeadDescription:
    """TextSpan on one component's outputs [n_images, dim] against a bank's text embeddings [n_captions, dim]
    (see the module's docstring); `captions` names the bank's rows. With protocol="paper" the bank is
    projected onto the outputs' top `rank` right singular vectors (the paper's `--w_ov_rank`: 80, ViT-H/14's
    head width; `describe_heads` passes the model's own head width). A rank above the outputs' own lets
    rounding noise choose the extra directions, in the paper's code as here."""
    n_descriptions = check_int("n_descriptions", n_descriptions, minimum=1)
    protocol = _check_protocol(protocol)
    if outputs.ndim != 2 or outputs.shape[0] < 2:
        raise ValueError(f"outputs must be [n_images, dim] with at least 2 images (TextSpan reads their variance), "
                         f"got shape {list(outputs.shape)}")
    if embeds.shape[-1] != outputs.shape[-1]:
        raise ValueError(f"text embeddings are {embeds.shape[-1]}-dimensional but the head outputs are "
                         f"{outputs.shape[-1]}-dimensional: pass the same model's captions or embeddings")
    if n_descriptions >= len(embeds) + (protocol == "paper"):
        raise ValueError(f"n_descriptions={n_descriptions} but the bank has {len(embeds)} captions"
                         + (f": centred over the bank they span at most {len(embeds) - 1} directions"
                            if protocol == "clipx" else ""))
    if protocol == "paper":
        rank = check_int("rank", rank, minimum=1)
        top = torch.linalg.svd(outputs.double(), full_matrices=False)[2][:rank]  # of the uncentred outputs
        texts = F.normalize(embeds.double(), dim=-1) @ top.T @ top
    else:
        texts = text_directions(embeds).double()
    data = outputs.double() - outputs.double().mean(0)
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


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


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
