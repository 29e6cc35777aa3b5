"""`Explanation`: the maps one `clipx.explain` call produced, with what is needed to show them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import explanation_file
from ..errors import check_int
from .figure import explanation_figure


@dataclass
class Explanation:
    """Maps for every image x caption pair.

    image:  [n_images, n_texts, grid_h, grid_w] relevance on the patch grid, or None
    text:   [n_images, n_texts, L] relevance over the positions of input_ids, or None
    scores: [n_images, n_texts] the logits (logits_per_image) that were explained
    tokens: per caption, its display tokens (no padding), position k matching text[..., k]
    token_maps: [n_images, n_texts, L, grid_h, grid_w] per-token maps (methods that have them), or None
    """

    image: torch.Tensor | None
    text: torch.Tensor | None
    scores: torch.Tensor
    tokens: list[list[str]]
    texts: list[str]
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None  # the preprocessed images as uint8 [n_images, H, W, 3], for display
    token_maps: torch.Tensor | None = None
    crop_boxes: list[tuple[float, float, float, float]] | None = None  # where each crop sits in its original
    image_sizes: list[tuple[int, int]] | None = None                  # original (width, height)

    @property
    def n_images(self) -> int:
        return self.scores.shape[0]

    @property
    def n_texts(self) -> int:
        return self.scores.shape[1]

    def pixel_maps(self, size: tuple[int, int] | None = None, original: bool = False, text: int | None = None):
        """The image maps upsampled (bilinear) to pixels.

        size=None: the preprocessed image's size -> [n_images, n_texts, H, W].
        original=True: onto each original image, through the centre crop the processor took;
        pixels outside the crop get 0 -> a list (one [n_texts, height, width] tensor per image).
        text=j: caption j's maps only (n_texts becomes 1), so full-size maps can be made one at a time.
        """
        if self.image is None:
            raise ValueError(f"the {self.method!r} method gives no image maps")
        image = self.image if text is None else self.image[:, [_caption_index(text, self.n_texts)]]
        if not original:
            size = _check_size(size) if size is not None else tuple(self.images.shape[1:3])
            return F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
        if self.crop_boxes is None or self.image_sizes is None:
            raise ValueError("the original images are unknown: explain() was given preprocessed pixel_values")
        maps = []
        for i, ((left, top, right, bottom), (width, height)) in enumerate(zip(self.crop_boxes, self.image_sizes)):
            # the crop in whole pixels: its size from the rounded edges, so placing it always fits
            left, top, right, bottom = (int(round(v)) for v in (left, top, right, bottom))
            x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
            inside = F.interpolate(image[i:i + 1].float(), size=(bottom - top, right - left),
                                   mode="bilinear", align_corners=False)[0]
            canvas = torch.zeros(image.shape[1], height, width)
            ox, oy = x0 - left, y0 - top
            canvas[:, y0:y1, x0:x1] = inside[:, oy:oy + y1 - y0, ox:ox + x1 - x0]
            maps.append(canvas)
        return maps

    # --- rendering (matplotlib) -------------------------------------------------------------------
    def figure(self, **kwargs: Any):
        """A matplotlib Figure: one overlay per image x caption pair, titled with its caption and score, its words
        beneath labelled with their values, the method and its non-default options above, and colour bars; the
        maps diverging around zero where the method's values are signed. Keywords (`figure.explanation_figure`):
        scale="shared" (one scale for all pairs, so a weak pair looks weak) or "panel"; alpha (the overlay's
        opacity where a map is strongest); cmap; scoring ("softmax" or "sigmoid": the model's `config.scoring`,
        to show each pair's probability); cell_size."""
        return explanation_figure(self, **kwargs)

    def show(self, **kwargs: Any) -> None:
        """The figure, shown by pyplot (inline in a notebook); the keywords are `figure`'s."""
        import matplotlib.pyplot as plt

        self.figure(pyplot=True, **kwargs)
        plt.show()

    # --- save / load ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One .safetensors file: the maps and tensor options as tensors, the rest as JSON in its
        metadata. An option that cannot be stored is a ValueError naming it (and nothing is written)."""
        explanation_file.write(self._fields(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        """An Explanation saved by `save` (also by earlier clipx versions); a ValueError naming the file
        where it is not one or its parts disagree."""
        return cls(**explanation_file.read(path))

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:
        maps = ", ".join(f"{k}={list(v.shape)}" for k in ("image", "text", "token_maps")
                         if (v := getattr(self, k)) is not None)
        return f"Explanation(method={self.method!r}, {self.n_images} images x {self.n_texts} texts, {maps})"


def _check_size(size: Any) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"size must be (height, width), two positive ints, got {size!r}")
    return tuple(size)


def _caption_index(text: Any, n_texts: int) -> int:
    text = check_int("text", text)
    if not -n_texts <= text < n_texts:
        raise IndexError(f"text {text} is out of range for {n_texts} captions")
    return text
