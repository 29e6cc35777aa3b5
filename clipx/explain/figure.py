"""The static picture of an Explanation (`Explanation.figure()`): a matplotlib figure with one overlay per
image x caption pair, titled with its caption and score, the caption's words beneath it shaded and labelled
with their values, the method and its non-default options above all, and colour bars saying what the values
are (`legend`: the scales, diverging for signed maps, and the titles every picture of a map shares)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .legend import ALPHA, Scale, image_scale, method_title, score_title, text_scale, word_positions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Captions, tokens and method names are text: without this, matplotlib reads "$...$" as maths
# (`a $\frac$ star` raises) and, with rcParams["text.usetex"], hands every string to LaTeX.
LITERAL = dict(parse_math=False, usetex=False)
SCALES = ("shared", "panel")


def explanation_figure(exp: Any, scale: str = "shared", alpha: float = ALPHA, cmap: str | None = None,
                       scoring: str | None = None, cell_size: float = 2.6, pyplot: bool = False) -> Figure:
    """The figure of an Explanation `exp`.

    scale: "shared" draws every pair's map on one scale, so a caption that does not match looks weak;
    "panel" gives each pair its own scale and colour bar. The words of all captions share one scale (each
    word is labelled with its value). alpha: the overlay's opacity where a map reaches its limit; where
    it says nothing the image shows unchanged. cmap: a matplotlib colour map instead of the one the
    method's values call for. scoring: the model's `config.scoring` ("softmax" or "sigmoid") to show
    each pair's probability beside its logit. `pyplot=True` registers the figure with pyplot, whose
    show() only knows its own figures; the default keeps it out of pyplot, so figures made in a loop are
    freed with their last reference."""
    from matplotlib.figure import Figure  # imported here: matplotlib costs `import clipx` a third of a second

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")
    rows, cols = exp.n_images, exp.n_texts
    has_map, has_words = exp.image is not None, exp.text is not None
    size = (cell_size * cols + 1.2, (cell_size + 0.9) * rows + (0.9 if has_words else 0.3))
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=size, layout="constrained")
    else:
        fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shared = image_scale(exp, cmap=cmap) if has_map else None
    words = text_scale(exp, cmap=cmap) if has_words else None
    overlays = exp.images is not None and has_map
    maps = exp.pixel_maps() if overlays else exp.image
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if exp.images is not None:
                ax.imshow(exp.images[i].numpy())
            if has_map:
                own = shared if scale == "shared" else image_scale(exp, (i, j), cmap)
                if overlays:  # the map's colours, as opaque as it is strong
                    ax.imshow(own.rgba(maps[i, j], alpha))
                else:  # no image to lay it over: the map itself, patch by patch
                    ax.imshow(own.colours(maps[i, j]), interpolation="nearest")
                if scale == "panel":
                    colour_bar(fig, own, ax, shrink=0.8)
            ax.set_title(f"{exp.texts[j]}\n{score_title(exp.scores[i], j, scoring)}", fontsize=8, **LITERAL)
            if has_words:
                ax.set_xlabel("\n ", fontsize=7, **LITERAL)  # reserves the two lines the words are drawn on
                draw_tokens(ax, exp.tokens[j], exp.text[i, j], words)
    if shared is not None and scale == "shared":
        colour_bar(fig, shared, axes.ravel().tolist(), shrink=min(0.9, 0.5 + 0.2 * rows))
    if words is not None:
        colour_bar(fig, words, axes.ravel().tolist(), location="bottom", shrink=min(0.6, 0.3 * cols),
                   label=f"words: {words.label}")
    fig.suptitle(method_title(exp.method, exp.options), fontsize=10, **LITERAL)
    return fig


def colour_bar(fig: Figure, scale: Scale, ax: Any, label: str | None = None, **kwargs: Any) -> None:
    """A colour bar of `scale` beside `ax` (an Axes or a list of them), labelled with what the value is."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(scale.low, scale.high), scale.colormap)
    bar = fig.colorbar(mappable, ax=ax, aspect=25, **kwargs)
    bar.set_label(scale.label if label is None else label, fontsize=8, **LITERAL)
    # the scale's own ticks, written as literal text too: under text.usetex matplotlib would hand them to LaTeX
    bar.set_ticks(scale.ticks, labels=[scale.format(v) for v in scale.ticks], fontsize=7, **LITERAL)


def draw_tokens(ax: Axes, tokens: list[str], values: Any, scale: Scale) -> None:
    """The caption's words under the image, each shaded by its value on `scale` and labelled with it (BOS,
    EOS and padding left out)."""
    words = word_positions(tokens)
    draw_words(ax, [(f"{tokens[k]}\n{scale.format(float(values[k]))}", tuple(colour))
                    for k, colour in zip(words, scale.colours(values[words]).tolist())] if words else [])


def draw_words(ax: Axes, words: list[tuple[str, tuple[int, int, int]]]) -> None:
    """Words in a row under the image, each on its own background colour (RGB, 0-255)."""
    previous = None
    for text, (r, g, b) in words:
        ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
        style = dict(fontsize=7, color=ink, ha="left", multialignment="center", **LITERAL,
                     bbox=dict(boxstyle="round,pad=0.2", fc=(r / 255, g / 255, b / 255), lw=0))
        if previous is None:  # the first word hangs under the image's left edge
            previous = ax.annotate(text, xy=(0, -0.04), xycoords="axes fraction", va="top", **style)
        else:  # each next word sits right of the one before
            previous = ax.annotate(text, xy=(1, 0.5), xycoords=previous, va="center",
                                   xytext=(4, 0), textcoords="offset points", **style)
