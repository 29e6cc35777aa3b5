"""The static picture of an Explanation (`Explanation.figure()`): a matplotlib figure with one overlay per
image x caption pair and the caption's tokens beneath, each shaded by its relevance; and the min-max
scaling every picture of a map shares (`views.render` draws with it too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch


if TYPE_CHECKING:
    from matplotlib.figure import Figure

# the special tokens of the tokenizers clipx reads (CLIP's; SigLIP's SentencePiece and Gemma ones)
SPECIAL = ("<|startoftext|>", "<|endoftext|>", "</s>", "<s>", "<pad>", "<bos>", "<eos>")

# Captions, tokens and method names are text: without this, matplotlib reads "$...$" as maths
# (`a $\frac$ star` raises) and, with rcParams["text.usetex"], hands every string to LaTeX.
LITERAL = dict(parse_math=False, usetex=False)


def as_array(values: Any) -> np.ndarray:
    """float32 numpy from arrays, lists or tensors on any device and in any dtype."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu()
    return np.asarray(values, dtype=np.float32)


def normalise(values: Any) -> np.ndarray:
    """Min-max to [0, 1] as float32 (a constant map becomes zeros)."""
    values = as_array(values)
    low, high = values.min(initial=np.inf), values.max(initial=-np.inf)
    if not high > low:
        return np.zeros_like(values)
    unit = values - low  # one copy, scaled in place
    unit /= high - low
    return unit


def explanation_figure(exp: Any, cmap: str = "jet", alpha: float = 0.5,
                       cell_size: float = 2.6, pyplot: bool = False) -> Figure:
    """The figure of an Explanation `exp`. `pyplot=True` registers the figure with pyplot, whose show()
    only knows its own figures; the default keeps it out of pyplot, so figures made in a loop are freed
    with their last reference."""
    from matplotlib.figure import Figure  # imported here: matplotlib costs `import clipx` a third of a second

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
    import matplotlib

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
