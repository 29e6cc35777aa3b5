"""Pictures of maps without widgets: heatmap overlays, highlighted captions, labelled grids.

Everything here is plain numpy + PIL on small arrays, so an explorer can re-render on every
slider move: colormaps become a 256-entry lookup table once, heatmaps are upsampled by PIL,
and PNGs are written with light compression.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from ..explain.figure import SPECIAL, as_array, normalise

if TYPE_CHECKING:
    from ..explain.explanation import Explanation

PAD = 4  # pixels between grid cells


@lru_cache(maxsize=None)
def _lut(cmap: str) -> np.ndarray:
    """The colormap as a [256, 3] uint8 table: indexing it is far faster than calling matplotlib."""
    return matplotlib.colormaps[cmap](np.linspace(0, 1, 256), bytes=True)[:, :3]


def shade(unit: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB [..., 3]."""
    index = np.asarray(np.multiply(unit, 255, dtype=np.float32))
    index = np.rint(index, out=index).astype(np.uint8)  # rounded in place, and the float copy let go
    return _lut(cmap)[index]


def colorize(values: Any, cmap: str = "jet") -> np.ndarray:
    """Values (any shape) -> uint8 RGB [..., 3], min-max normalised over all of them."""
    return shade(normalise(values), cmap)


def overlay(image: Any, heatmap: Any, cmap: str = "jet", alpha: float = 0.5,
            contour_top: float | None = None) -> Image.Image:
    """The heatmap (any resolution, min-max normalised) upsampled onto the image, blended with
    opacity `alpha`; `contour_top=20` outlines the top 20% of the heatmap's pixels in white.
    Lean on big photos: one float32 map at the image's size, the rest 8-bit."""
    if contour_top is not None and not 0 < contour_top <= 100:
        raise ValueError(f"contour_top is a percentage in (0, 100], got {contour_top}")
    if isinstance(image, Image.Image):
        base = image if image.mode == "RGB" else image.convert("RGB")  # only read below, so not copied
    else:
        base = Image.fromarray(np.asarray(image, np.uint8))
    if heatmap is None:
        return base.copy() if base is image else base
    heat = normalise(heatmap)
    if heat.shape != (base.height, base.width):  # bilinear on pixel centres, as Explanation.pixel_maps does
        heat = np.asarray(Image.fromarray(heat).resize(base.size, Image.BILINEAR))
    out = Image.blend(base, Image.fromarray(shade(heat, cmap)), alpha)
    if contour_top is not None:
        region = Image.fromarray((heat >= np.quantile(heat, 1 - contour_top / 100)).astype(np.uint8) * 255)
        inner = region.filter(ImageFilter.MinFilter(3))  # the region shrunk by a pixel: the rest is its edge
        out.paste((255, 255, 255), mask=ImageChops.subtract(region, inner))
    return out


def mark_patch(image: Image.Image, row: int, col: int, grid: tuple[int, int], colour: str = "white") -> Image.Image:
    """A copy of the image with patch (row, col) of a grid_h x grid_w patch grid outlined."""
    out = image.copy()
    h, w = out.height / grid[0], out.width / grid[1]
    ImageDraw.Draw(out).rectangle([col * w, row * h, (col + 1) * w - 1, (row + 1) * h - 1], outline=colour, width=2)
    return out


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # light compression: 3-4x faster to write
    return buf.getvalue()


def token_html(tokens: Sequence[str], values: Any = None, cmap: str = "jet") -> str:
    """The caption's tokens as HTML, each shaded by its value (normalised over the words);
    BOS / EOS are shown dimmed and unshaded. Hovering a token shows its value."""
    values = None if values is None else as_array(values)[:len(tokens)]
    words = [k for k, t in enumerate(tokens) if t not in SPECIAL]
    shades = dict(zip(words, normalise(values[words]))) if values is not None and words else {}
    spans = []
    for k, token in enumerate(tokens):
        title = "" if values is None else f' title="{values[k]:.4g}"'
        if k in shades:
            r, g, b = shade(shades[k], cmap)
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
            style = f"background:rgb({r},{g},{b});color:{ink};padding:1px 3px;border-radius:3px"
        else:
            style = "color:#999;font-size:80%"
        spans.append(f'<span style="{style}"{title}>{html.escape(token)}</span>')
    return f'<div style="line-height:1.9;font-family:monospace">{" ".join(spans)}</div>'


def scores_table(texts: Sequence[str], logits: Any, selected: str | None = None, scoring: str = "softmax") -> str:
    """Each caption's logit and its probability, as an HTML table: a softmax over the captions, or with
    scoring="sigmoid" (SigLIP's; `model.config.scoring` says which) each caption's own sigmoid."""
    logits = as_array(logits).astype(np.float64)
    if scoring == "sigmoid":
        probs = 1 / (1 + np.exp(-logits))
    elif scoring == "softmax":
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
    else:
        raise ValueError(f"scoring must be 'softmax' or 'sigmoid', got {scoring!r}")
    weight = {True: "bold", False: "normal"}
    rows = "".join(f'<tr style="font-weight:{weight[t == selected]}"><td>{html.escape(t)}</td>'
                   f'<td style="text-align:right">{v:.2f}</td><td style="text-align:right">{p:.1%}</td></tr>'
                   for t, v, p in zip(texts, logits, probs))
    return f"<table><tr><th>caption</th><th>logit</th><th>p</th></tr>{rows}</table>"


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return int(right - left), int(bottom - top)


def grid(cells: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = ()) -> Image.Image:
    """Equal-sized cells in rows and columns on white, with optional labels left of each row and above each column."""
    cell_w, cell_h = cells[0][0].size
    n_cols = max(len(row) for row in cells)
    label_w = max((_text_size(t)[0] for t in row_labels), default=-PAD) + PAD
    label_h = max((_text_size(t)[1] for t in col_labels), default=-PAD) + PAD
    size = (label_w + n_cols * (cell_w + PAD) - PAD, label_h + len(cells) * (cell_h + PAD) - PAD)
    out = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(out)
    for c, text in enumerate(col_labels):
        draw.text((label_w + c * (cell_w + PAD), 0), _fit(text, cell_w), fill="black", font=_font())
    for r, row in enumerate(cells):
        y = label_h + r * (cell_h + PAD)
        if r < len(row_labels):
            draw.text((0, y + cell_h // 2), row_labels[r], fill="black", font=_font(), anchor="lm")
        for c, cell in enumerate(row):
            out.paste(cell, (label_w + c * (cell_w + PAD), y))
    return out


def _fit(text: str, width: int) -> str:
    """The text cut with an ellipsis so it fits `width` pixels."""
    while len(text) > 1 and _text_size(text)[0] > width:
        text = text[:-2] + "…"
    return text


def explanation_grid(explanations: Mapping[str, "Explanation"], image: int = 0, size: int = 160,
                     cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Methods (rows) x captions (columns) for one image: `{method: clipx.explain(...)}` of the same captions."""
    rows, labels = [], []
    for method, exp in explanations.items():
        picture = Image.fromarray(exp.images[image].numpy()).resize((size, size), Image.BILINEAR)
        rows.append([overlay(picture, exp.image[image, j], cmap, alpha) for j in range(exp.n_texts)])
        labels.append(method)
    return grid(rows, labels, next(iter(explanations.values())).texts)


def heads_grid(image: Image.Image, maps: Any, cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Layers (rows) x heads (columns): maps [n_layers, n_heads, grid_h, grid_w], e.g. the class
    token's attention to the patches, each overlaid on the image."""
    maps = as_array(maps)
    cells = [[overlay(image, head, cmap, alpha) for head in layer] for layer in maps]
    return grid(cells, [f"layer {i}" for i in range(len(maps))], [f"head {h}" for h in range(maps.shape[1])])


def matrix(values: Any, labels: Sequence[str], cmap: str = "viridis", cell: int = 18) -> Image.Image:
    """A square matrix (e.g. token-to-token attention, queries as rows) as a heatmap with each
    row labelled on the left and each column above (rotated)."""
    values = as_array(values)
    heat = Image.fromarray(colorize(values, cmap)).resize((values.shape[1] * cell, values.shape[0] * cell),
                                                          Image.NEAREST)
    margin = max(_text_size(t)[0] for t in labels) + PAD
    out = Image.new("RGB", (margin + heat.width, margin + heat.height), "white")
    out.paste(heat, (margin, margin))
    top = Image.new("RGB", (margin, heat.width), "white")  # column labels written sideways, then turned upright
    draw, top_draw = ImageDraw.Draw(out), ImageDraw.Draw(top)
    for k, text in enumerate(labels):
        centre = k * cell + cell // 2
        draw.text((margin - PAD, margin + centre), text, fill="black", font=_font(), anchor="rm")
        top_draw.text((PAD, centre), text, fill="black", font=_font(), anchor="lm")
    out.paste(top.rotate(90, expand=True), (margin, 0))
    return out
