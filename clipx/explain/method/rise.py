"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018): the logit averaged over random masks, weighted by how much each mask shows.

`n_masks` binary masks on a coarse grid of `cell_size` x `cell_size` patch cells, each cell kept
with probability `p`; each mask is upsampled bilinearly to one cell more than the image and cropped
at a random shift of under one cell, so its edges are soft and fall anywhere (the paper's recipe).
Masks come from `seed` alone, the same for every image. The masked image is
`mask * image + (1 - mask) * baseline` (baseline as in `perturbation.baseline_images`; "zero", the
processor's mean colour, is the paper's I * M in normalised pixels). Map = sum over masks of
logit x mask / (n_masks x p), the mask averaged over each patch's pixels: the logit expected when
the patch is visible. Logits, not probabilities: a softmax over the captions would make each pair's
map depend on the other captions. Image only; every caption is scored from the same masked images.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ...errors import check_int
from ..core import Inputs, Maps, Values, register
from .perturbation import Captions, check_baseline, check_batch_size, perturbed_embeddings


def check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


@register("rise", Values("level", "expected logit when visible"))
def rise(x: Inputs, n_masks: int = 1000, cell_size: int = 2, p: float = 0.5, seed: int = 0,
         baseline: str = "zero", batch_size: int = 64, progress: bool | None = None) -> Maps:
    n_masks = check_int("n_masks", n_masks, minimum=1)
    cell_size = check_int("cell_size", cell_size, minimum=1)
    p = check_probability("p", p)
    seed = check_int("seed", seed)
    check_baseline(baseline)
    batch_size = check_batch_size(batch_size)

    patch = x.model.vision.config.patch_size
    (gh, gw), (height, width) = x.grid, x.pixel_values.shape[-2:]
    cell = cell_size * patch  # in pixels
    rows, cols = math.ceil(height / cell) + 1, math.ceil(width / cell) + 1
    generator = torch.Generator().manual_seed(seed)
    cells = (torch.rand(n_masks, 1, rows, cols, generator=generator) < p).to(x.pixel_values)
    shifts = torch.randint(0, cell, (n_masks, 2), generator=generator).tolist()

    def masks(k: slice) -> torch.Tensor:
        """Masks k as [len(k), 1, H, W] (made per batch: all of them at once may not fit in memory)."""
        up = F.interpolate(cells[k], size=(rows * cell, cols * cell), mode="bilinear", align_corners=False)
        return torch.stack([m[:, dy:dy + height, dx:dx + width] for m, (dy, dx) in zip(up, shifts[k])])

    def masked(image: torch.Tensor, background: torch.Tensor, k: slice) -> torch.Tensor:
        m = masks(k)
        return m * image + (1 - m) * background

    scores = Captions.encode(x).logits(perturbed_embeddings(x, n_masks, masked, baseline, batch_size, progress, "rise"))
    visible = torch.cat([F.avg_pool2d(masks(slice(s, s + batch_size))[..., :gh * patch, :gw * patch], patch)
                         .flatten(1) for s in range(0, n_masks, batch_size)])  # [n_masks, n_patches]
    image = torch.einsum("bmt,mp->btp", scores[:, 1:], visible) / (n_masks * p)
    return Maps(scores[:, 0], x.patch_grid(image))
