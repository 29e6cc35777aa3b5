"""Matplotlib figures of an Explanation: one overlay per image x caption pair, with the caption's
tokens beneath, each shaded by its relevance."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib
import torch
from matplotlib.figure import Figure

from .render import SPECIAL, normalise

if TYPE_CHECKING:
    from ..explain.explanation import Explanation

# Captions, tokens and method names are text: without this, matplotlib reads "$...$" as maths
# (`a $\frac$ star` raises) and, with rcParams["text.usetex"], hands every string to LaTeX.
LITERAL = dict(parse_math=False, usetex=False)


def explanation_figure(exp: "Explanation", cmap: str = "jet", alpha: float = 0.5,
                       cell_size: float = 2.6, pyplot: bool = False) -> Figure:
    """`pyplot=True` registers the figure with pyplot, whose show() only knows its own figures;
    the default keeps it out of pyplot, so figures made in a loop are freed with their last reference."""
    rows, cols = exp.n_images, exp.n_texts
    size = (cell_size * cols, (cell_size + 0.5) * rows)
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size, layout="constrained")
    else:
        fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    maps = exp.pixel_maps() if exp.image is not None and exp.images is not None else None
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if exp.images is not None:
                ax.imshow(exp.images[i].numpy())
            if maps is not None:
                ax.imshow(normalise(maps[i, j]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            ax.set_title(f"{exp.texts[j]}\nlogit {exp.scores[i, j]:.2f}", fontsize=8, **LITERAL)
            if exp.text is not None:
                ax.set_xlabel(" ", fontsize=10, **LITERAL)  # reserves the line the tokens are drawn on
                draw_tokens(ax, exp.tokens[j], exp.text[i, j, :len(exp.tokens[j])], cmap)
    fig.suptitle(exp.method, fontsize=10, **LITERAL)
    return fig


def draw_tokens(ax, tokens: list[str], values: torch.Tensor, cmap: str) -> None:
    """The caption's words under the image, coloured by relevance (BOS / EOS left out)."""
    keep = [k for k, t in enumerate(tokens) if t not in SPECIAL]
    if not keep:
        return
    shade = normalise(values[keep])
    colormap = matplotlib.colormaps[cmap]
    previous = None
    for k, s in zip(keep, shade.tolist()):
        style = dict(fontsize=8, **LITERAL, bbox=dict(boxstyle="round,pad=0.15", fc=colormap(s, alpha=0.6), lw=0))
        if previous is None:  # the first word hangs under the image's left edge
            previous = ax.annotate(tokens[k], xy=(0, -0.03), xycoords="axes fraction", va="top", **style)
        else:  # each next word sits right of the one before
            previous = ax.annotate(tokens[k], xy=(1, 0.5), xycoords=previous, va="center",
                                   xytext=(3, 0), textcoords="offset points", **style)
