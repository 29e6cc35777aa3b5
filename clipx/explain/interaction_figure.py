"""The static picture of one pair's interactions (`Interactions.figure()`), in the style of the exCLIP paper
(Moeller et al., TMLR 2025): the caption with a span of its words marked and the span's region map over the
image, red where the span and a patch add to the similarity together and blue where they take from it; with a
region, beside it the image with the region outlined and the caption's words shaded by their interaction with
it. Colour bars centred at zero say what the values are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .figure import LITERAL, colour_bar, draw_tokens, draw_words
from .legend import ALPHA, Scale, region_edges, word_positions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LABEL = "interaction"
MARKED = (255, 214, 10)   # the span's words: a highlighter's yellow, neither end of the diverging scale
UNMARKED = (236, 236, 236)


def interaction_figure(inter: Any, image: int = 0, text: int = 0, span: Any = None,
                       rows: slice | int | None = None, cols: slice | int | None = None, *,
                       mask: torch.Tensor | None = None, alpha: float = ALPHA, cmap: str | None = None,
                       cell_size: float = 3.0, pyplot: bool = False) -> Figure:
    """The figure of pair (image, text) of `inter`, an `Interactions` (which imports this module).

    span: the caption's token positions whose region map is drawn (an index, a slice or a list, as
    `Interactions.span` takes them; default: the caption's last word). rows, cols or mask: a region of
    the patch grid (as `Interactions.box` takes it); given, a second panel outlines it and shades the
    caption's words by their interaction with it. alpha: the overlay's opacity where the map is strongest;
    cmap: a diverging colour map instead of the default. `pyplot=True` registers the figure with pyplot."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    tokens = inter.tokens[text]
    words = word_positions(tokens)
    if span is None:
        span = (words or [len(tokens) - 1])[-1]
    region_map = inter.span(image, text, span)
    marked = set(inter.positions(span, len(tokens)).tolist())
    region = None if rows is None and cols is None and mask is None else inter.region(rows, cols, mask=mask)
    panels = 1 if region is None else 2
    size = (cell_size * panels + 1.2 * panels, cell_size + 1.5)
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size, layout="constrained")
    else:
        fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    picture = None if inter.images is None else inter.images[image]

    ax = axes[0]
    scale = Scale.fit(region_map, "signed", LABEL, cmap)
    draw_map(ax, picture, region_map, scale, alpha, tuple(region_map.shape))
    ax.set_title(f"span: {' '.join(tokens[k] for k in sorted(marked))}", fontsize=8, **LITERAL)
    ax.set_xlabel("\n ", fontsize=7, **LITERAL)  # reserves the lines the caption is drawn on
    draw_words(ax, [(tokens[k], MARKED if k in marked else UNMARKED) for k in words])
    colour_bar(fig, scale, ax, label=f"{LABEL}: the span's map", shrink=0.8)

    if region is not None:
        ax = axes[1]
        strip = inter.box(image, text, mask=region)
        draw_map(ax, picture, None, scale, alpha, tuple(region.shape))
        height, width = (picture.shape[:2] if picture is not None else region.shape)
        sy, sx = height / region.shape[0], width / region.shape[1]
        segments = [[(x0 * sx - 0.5, y0 * sy - 0.5), (x1 * sx - 0.5, y1 * sy - 0.5)]
                    for (x0, y0), (x1, y1) in region_edges(region)]
        ax.add_collection(LineCollection(segments, colors="black", linewidths=3))  # dark under white: seen anywhere
        ax.add_collection(LineCollection(segments, colors="white", linewidths=1.5))
        ax.set_title(f"region: {int(region.sum())} of {region.numel()} patches", fontsize=8, **LITERAL)
        ax.set_xlabel("\n ", fontsize=7, **LITERAL)
        shown = words or list(range(len(tokens)))
        word_scale = Scale.fit(strip[shown], "signed", LABEL, cmap)
        draw_tokens(ax, tokens, strip, word_scale)
        colour_bar(fig, word_scale, ax, label=f"words: {LABEL} with the region", shrink=0.8)

    fig.suptitle(f"{inter.texts[text]}\nall interactions {float(inter.total[image, text]):+.3f};  s(x, y) - s(r_x, y) "
                 f"- s(x, r_y) + s(r_x, r_y) = {float(inter.expected[image, text]):+.3f}", fontsize=9, **LITERAL)
    return fig


def draw_map(ax: Axes, picture: torch.Tensor | None, values: torch.Tensor | None, scale: Scale, alpha: float,
             grid: tuple[int, int]) -> None:
    """The picture with the map (on the `grid` of patches) upsampled over it, as opaque as the map is strong;
    without a picture, the map itself patch by patch; `values` None: the picture alone (or a blank grid)."""
    ax.set_xticks([]), ax.set_yticks([])
    if picture is None:
        ax.imshow(scale.colours(values if values is not None else torch.zeros(grid)), interpolation="nearest")
        return
    ax.imshow(picture.numpy())
    if values is not None:  # bilinear on pixel centres, as Explanation.pixel_maps does
        pixels = F.interpolate(values[None, None].float(), size=tuple(picture.shape[:2]), mode="bilinear",
                               align_corners=False)[0, 0]
        ax.imshow(scale.rgba(pixels, alpha))
