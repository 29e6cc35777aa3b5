"""What integrating along a path from a baseline needs, shared by integrated gradients and the
second-order interactions: the baseline image as pixel_values, and what one interpolated row keeps in
memory for a backward (to size the chunks under a budget)."""

from __future__ import annotations

import numbers

import torch

from ..errors import check_has_values


def row_bytes(tower, tokens: torch.Tensor, blocks: int) -> int:
    """What one row of `tokens` [N, L, width] keeps for a backward through `blocks` of the tower's blocks:
    a block keeps about a dozen [L, width] tensors and the heads' [L, L] scores and probabilities."""
    length, width = tokens.shape[1:]
    return blocks * length * (16 * width + 3 * tower.n_heads * length) * tokens.element_size()


def baseline_pixels(value: torch.Tensor | float, pixel_values: torch.Tensor, name: str) -> torch.Tensor:
    """The option `name` as pixel_values [B, 3, H, W]: one number, one image [3, H, W] for all, or one per image."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a number (in normalised pixels: 0.0 is the mean colour) or a "
                        f"tensor of preprocessed pixels, got {value!r:.80}")
    check_has_values(name, value)
    baseline = torch.as_tensor(value, dtype=pixel_values.dtype, device=pixel_values.device)
    try:
        baseline = baseline.expand_as(pixel_values).contiguous()
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(baseline.shape)} does not fit the pixel_values "
                         f"{tuple(pixel_values.shape)}: give one number, one image [3, H, W] or one per image") from None
    if not torch.isfinite(baseline).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return baseline
