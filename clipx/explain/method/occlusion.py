"""Occlusion (Zeiler & Fergus, ECCV 2014): hide a window of patches, see how far the logit drops.

Windows of `window` x `window` patches slide over the patch grid with `stride` patches (ints, or
(rows, columns) pairs), as Captum's `Occlusion` slides them: from the top-left corner while the
window fits, so with a stride that does not tile the grid the last rows / columns of patches may be
covered by no window and get 0. Hidden pixels take the `baseline` (see
`perturbation.baseline_images`: "zero" is the processor's mean colour). A patch's value is the
drop in the pair's logit (image as given minus occluded) averaged over the windows covering it.
Image only; every caption is scored from the same occluded images.
"""

from __future__ import annotations

import itertools

import torch

from ...errors import check_int
from ..core import Inputs, Maps, Values, register
from .perturbation import Captions, check_baseline, check_batch_size, perturbed_embeddings


def window_pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """An option in patches, one int or (rows, columns), as two ints of at least 1."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (rows, columns) pair, got {value!r}")
    return check_int(name, pair[0], minimum=1), check_int(name, pair[1], minimum=1)


def windows(grid: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """[n_windows, grid_h, grid_w] booleans, one window each, in raster order of their corners."""
    (gh, gw), (wh, ww), (sh, sw) = grid, window, stride
    corners = list(itertools.product(range(0, gh - wh + 1, sh), range(0, gw - ww + 1, sw)))
    masks = torch.zeros(len(corners), gh, gw, dtype=torch.bool)
    for k, (top, left) in enumerate(corners):
        masks[k, top:top + wh, left:left + ww] = True
    return masks


@register("occlusion", Values("signed", "logit drop when hidden"))
def occlusion(x: Inputs, window: int | tuple[int, int] = 1, stride: int | tuple[int, int] = 1,
              baseline: str = "zero", batch_size: int = 64, progress: bool | None = None) -> Maps:
    size, step = window_pair("window", window), window_pair("stride", stride)
    grid = x.grid
    if size[0] > grid[0] or size[1] > grid[1]:
        raise ValueError(f"window {window!r} is larger than the {grid[0]}x{grid[1]} patch grid")
    check_baseline(baseline)
    batch_size = check_batch_size(batch_size)
    masks = windows(grid, size, step).to(x.pixel_values.device)
    patch = x.model.vision.config.patch_size
    height, width = x.pixel_values.shape[-2:]

    def occlude(image: torch.Tensor, background: torch.Tensor, k: slice) -> torch.Tensor:
        # patches -> pixels; pixels past the last whole patch are never seen by the model
        hidden = masks[k].repeat_interleave(patch, 1).repeat_interleave(patch, 2)
        hidden = torch.nn.functional.pad(hidden, (0, width - hidden.shape[2], 0, height - hidden.shape[1]))
        return torch.where(hidden[:, None], background, image)

    captions = Captions.encode(x)
    embeds = perturbed_embeddings(x, len(masks), occlude, baseline, batch_size, progress, "occlusion")
    # the drop from the embeddings' difference: logits of ~25 would round it to their own ulp
    drops = captions.logits(embeds[:, :1] - embeds[:, 1:], bias=False)    # [B, n_windows, T]
    cover = masks.flatten(1).to(drops.dtype)                               # [n_windows, n_patches]
    image = torch.einsum("bwt,wp->btp", drops, cover) / cover.sum(0).clamp(min=1)
    return Maps(captions.logits(embeds[:, 0]), x.patch_grid(image))
