"""`Interactions`: what `clipx.interactions` returns, the token x patch matrix of every image-caption pair,
with the two ways of reading it (a span of tokens -> its region map, a region -> its token strip) and the
identity it approximates (its total against the four similarity terms)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .interaction_figure import interaction_figure

Positions = int | slice | list[int] | tuple[int, ...] | torch.Tensor


@dataclass
class Interactions:
    """values [n_images, n_texts, L, grid_h, grid_w]: how much token position t of caption j and patch
    (r, c) of image i together add to the pair's similarity (red for positive in a picture, blue for
    negative); prefix_values [n_images, n_texts, L, prefix] the same for the image's class token (no place
    on the image, dropped from the maps as the authors drop it, but part of the total).
    tokens[j]: caption j's token at every position (padding included, as the model read it).
    similarity, image_reference_similarity, text_reference_similarity, reference_similarity
    [n_images, n_texts]: s(x, y), s(r_x, y), s(x, r_y) and s(r_x, r_y), the cosines (times the logit scale
    where `options["scale"]`) whose combination the values add up to, up to the path integral's error.
    images: the preprocessed images as uint8 [n_images, H, W, 3], for figures (None without a processor)."""

    values: torch.Tensor
    prefix_values: torch.Tensor
    tokens: list[list[str]]
    texts: list[str]
    similarity: torch.Tensor
    image_reference_similarity: torch.Tensor
    text_reference_similarity: torch.Tensor
    reference_similarity: torch.Tensor
    options: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def expected(self) -> torch.Tensor:
        """[n_images, n_texts] s(x, y) - s(r_x, y) - s(x, r_y) + s(r_x, r_y): what the values approximate."""
        return (self.similarity - self.image_reference_similarity - self.text_reference_similarity
                + self.reference_similarity)

    @property
    def total(self) -> torch.Tensor:
        """[n_images, n_texts] the sum of every token x token-of-the-image interaction, class token included."""
        return self.values.sum(dim=(2, 3, 4)) + self.prefix_values.sum(dim=(2, 3))

    @property
    def gap(self) -> torch.Tensor:
        """[n_images, n_texts] total - expected: the completeness gap (the path integral's discretisation, and
        the authors' convention of normalising by the input embeddings' lengths, which no step count removes)."""
        return self.total - self.expected

    def span(self, image: int, text: int, tokens: Positions) -> torch.Tensor:
        """[grid_h, grid_w] the region map of a span of caption `text`'s token positions (an index, a slice, or
        a list): the sum of their rows."""
        pair = self._pair(image, text)
        return pair[self.positions(tokens, pair.shape[0])].sum(0)

    def box(self, image: int, text: int, rows: slice | int | None = None, cols: slice | int | None = None, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
        """[L] the token strip of a region of image `image`: the patches in `rows` x `cols` (slices of the
        grid), or those a boolean `mask` [grid_h, grid_w] marks; the sum of their columns."""
        pair = self._pair(image, text)
        return pair[:, self.region(rows, cols, mask=mask).to(pair.device)].sum(-1)

    def region(self, rows: slice | int | None = None, cols: slice | int | None = None, *,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The boolean mask [grid_h, grid_w] of the patches in `rows` x `cols`, or `mask` itself once checked."""
        grid = tuple(self.values.shape[3:])
        if mask is None:
            mask = torch.zeros(grid, dtype=torch.bool)
            mask[_cells(rows, "rows"), _cells(cols, "cols")] = True
        elif not isinstance(mask, torch.Tensor) or tuple(mask.shape) != grid or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor shaped like the patch grid {grid}, got {mask!r:.80}")
        if not mask.any():
            raise ValueError(f"the box rows={rows!r}, cols={cols!r} holds no patch of the {grid} grid")
        return mask

    def figure(self, image: int = 0, text: int = 0, **kwargs: Any):
        """A matplotlib Figure of one pair in the paper's style: the caption with a span marked and the span's
        map over the image; with a region (rows, cols or mask), the region outlined and the caption's words
        shaded by their interaction with it. Keywords: `interaction_figure.interaction_figure`'s."""
        return interaction_figure(self, image, text, **kwargs)

    def show(self, image: int = 0, text: int = 0, **kwargs: Any) -> None:
        """The figure, shown by pyplot (inline in a notebook); the keywords are `figure`'s."""
        import matplotlib.pyplot as plt

        self.figure(image, text, pyplot=True, **kwargs)
        plt.show()

    def _pair(self, image: int, text: int) -> torch.Tensor:
        n_images, n_texts = self.values.shape[:2]
        if not (isinstance(image, int) and -n_images <= image < n_images):
            raise IndexError(f"image {image!r} is not one of the {n_images} images")
        if not (isinstance(text, int) and -n_texts <= text < n_texts):
            raise IndexError(f"text {text!r} is not one of the {n_texts} captions")
        return self.values[image, text]

    @staticmethod
    def positions(tokens: Positions, length: int) -> torch.Tensor:
        """The positions [n] a span (an index, a slice, a list) picks of a caption's `length`."""
        index = torch.arange(length)[tokens if not isinstance(tokens, (list, tuple)) else list(tokens)]
        if index.numel() == 0:
            raise ValueError(f"the span {tokens!r} holds none of the caption's {length} positions")
        return index.reshape(-1)

    def __repr__(self) -> str:
        n_images, n_texts, length, grid_h, grid_w = self.values.shape
        return (f"Interactions({n_images} images x {n_texts} captions, {length} token positions x "
                f"{grid_h}x{grid_w} patches, n_steps={self.options.get('n_steps')}, "
                f"max |gap| {self.gap.abs().max().item():.2g})")


def _cells(cells: slice | int | None, name: str) -> slice | int:
    if cells is None:
        return slice(None)
    if isinstance(cells, (slice, int)) and not isinstance(cells, bool):
        return cells
    raise TypeError(f"{name} must be a slice of the patch grid or one index, got {cells!r:.80}")
