"""Comparing float32 results that were computed along different paths.

Two computations of the same quantity in float32 (another kernel, another batch size, another
summation order, another CPU) agree only up to rounding, and rounding grows with the size of the
values: logits of 25 differ in the 6th digit where logits of 0.1 differ in the 8th. So the
tolerance is relative to the scale of the expected tensor (its largest magnitude), not to each
element (near-zero entries of a map carry the same absolute rounding as its large ones) and not
an absolute number tuned on one machine.

`rtol` 1e-5 is about 80 float32 ulps of the scale: rounding along a few dozen differently
ordered operations stays an order of magnitude below it on every CPU we have seen (the largest
seen is ~5 ulps), while a real bug (a wrong scale, a dropped head, a wrong activation) moves
results by 1e-4 of the scale or more; `tests/model/test_floats.py` checks both sides.
"""

from __future__ import annotations

import torch

FLOAT32_RTOL = 1e-5


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """max |actual - expected| / max(max |expected|, floor)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), "non-finite values"
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, floor)
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = FLOAT32_RTOL,
                         floor: float = 0.0, what: str = "") -> None:
    """|actual - expected| <= rtol * max(max |expected|, floor) everywhere.

    `floor` makes the bound absolute for tensors whose values are all small (a parity target such as
    "logits within 1e-4, relative where large" is rtol=1e-4, floor=1).
    """
    ratio = max_relative_error(actual, expected, floor)
    assert ratio <= rtol, (f"{what + ': ' if what else ''}max |diff| is {ratio:.3g} x the scale "
                           f"(max |expected| = {torch.as_tensor(expected).abs().max().item():.4g}), above {rtol:g}")
