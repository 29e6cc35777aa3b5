"""Pictures of maps without widgets: heatmap overlays, highlighted captions, colour bars, labelled grids.

Everything here is plain numpy + PIL on small arrays, so an explorer can re-render on every
slider move: a colour scale (`explain.legend.Scale`) becomes a 256-row table of colours and
opacities once, heatmaps are upsampled by PIL and laid over the image by PIL, and PNGs are
written with light compression.
"""

from __future__ import annotations

import dataclasses
import html
import io
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from ..explain.legend import (ALPHA, Scale, as_array, image_scale, method_title, pair_title, region_edges,
                              score_title, word_positions)

if TYPE_CHECKING:
    from ..explain.explanation import Explanation

PAD = 4  # pixels between grid cells
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


def _scale(values: Any, scale: Scale | None, cmap: str | None) -> Scale:
    """`scale`, or the smallest-to-largest one of `values`; with `cmap`, drawn in that colour map."""
    if scale is None:
        return Scale.fit(values, "level", cmap=cmap)
    return scale if cmap is None else dataclasses.replace(scale, cmap=cmap)


def overlay(image: Any, heatmap: Any, cmap: str | None = None, alpha: float = ALPHA,
            contour_top: float | None = None, scale: Scale | None = None, crop: Box | None = None) -> Image.Image:
    """The heatmap (any resolution) upsampled onto the image in the colours of `scale` (default: from the
    map's smallest to its largest value), each pixel as opaque as the map is strong there: `alpha` where it
    reaches the scale's limit, not at all where it says nothing (the scale's low end, or zero on a signed
    scale), so the image shows unchanged there. `crop` (left, top, right, bottom): the part of an original
    image the model saw (`Explanation.crop_boxes`); the map is laid inside it only and the box outlined.
    `contour_top=20` outlines the top 20% of the heatmap's pixels in white.
    Lean on big photos: one float32 map at the image's size, the rest 8-bit."""
    if contour_top is not None and not 0 < contour_top <= 100:
        raise ValueError(f"contour_top is a percentage in (0, 100], got {contour_top}")
    if isinstance(image, Image.Image):
        base = image if image.mode == "RGB" else image.convert("RGB")  # only read below, so not copied
    else:
        base = Image.fromarray(np.asarray(image, np.uint8))
    if heatmap is None:
        return base.copy() if base is image else base
    scale = _scale(heatmap, scale, cmap)
    heat = as_array(heatmap)
    if heat.shape != (base.height, base.width):  # bilinear on pixel centres, as Explanation.pixel_maps does
        heat = np.asarray(Image.fromarray(heat).resize(base.size, Image.BILINEAR))
    colours = scale.rgba(heat, alpha)
    if crop is not None:  # nothing outside the crop was seen: the map is not laid there
        left, top, right, bottom = (int(round(v)) for v in crop)
        inside = np.zeros(colours.shape[:2], bool)
        inside[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
        colours[~inside, 3] = 0
    out = base.copy()
    layer = Image.fromarray(colours, "RGBA")
    out.paste(layer, mask=layer)  # image x (1 - opacity) + colour x opacity
    if contour_top is not None:
        region = Image.fromarray((heat >= np.quantile(heat, 1 - contour_top / 100)).astype(np.uint8) * 255)
        inner = region.filter(ImageFilter.MinFilter(3))  # the region shrunk by a pixel: the rest is its edge
        out.paste((255, 255, 255), mask=ImageChops.subtract(region, inner))
    if crop is not None and not _covers(crop, out.size):
        outline_box(out, crop)
    return out


def _covers(box: Box, size: tuple[int, int]) -> bool:
    left, top, right, bottom = (int(round(v)) for v in box)
    return left <= 0 and top <= 0 and right >= size[0] and bottom >= size[1]


def outline_box(image: Image.Image, box: Box) -> None:
    """Outlines `box` on the image in place: white inside a dark line, seen on light and dark pictures alike."""
    left, top, right, bottom = (int(round(v)) for v in box)
    width = max(2, round(min(image.size) / 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle([left - width, top - width, right - 1 + width, bottom - 1 + width], outline=(20, 20, 20),
                   width=width)
    draw.rectangle([left, top, right - 1, bottom - 1], outline="white", width=width)


def mark_patch(image: Image.Image, row: int, col: int, grid: tuple[int, int], colour: str = "white") -> Image.Image:
    """A copy of the image with patch (row, col) of a grid_h x grid_w patch grid outlined."""
    out = image.copy()
    h, w = out.height / grid[0], out.width / grid[1]
    ImageDraw.Draw(out).rectangle([col * w, row * h, (col + 1) * w - 1, (row + 1) * h - 1], outline=colour, width=2)
    return out


def outline_cells(image: Image.Image, mask: Any, colour: str = "white") -> Image.Image:
    """A copy of the image with a region of its patch grid outlined (`mask` [grid_h, grid_w] marks the region's
    patches: any shape, several pieces too); a region that is the whole grid is left unmarked."""
    mask = np.asarray(mask, bool)
    out = image.copy()
    if mask.all():
        return out
    w, h = (out.width - 1) / mask.shape[1], (out.height - 1) / mask.shape[0]  # the last pixel row is the border
    draw = ImageDraw.Draw(out)
    for (x0, y0), (x1, y1) in region_edges(mask):
        draw.line([x0 * w, y0 * h, x1 * w, y1 * h], fill=colour, width=2)
    return out


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # light compression: 3-4x faster to write
    return buf.getvalue()


# --- HTML ----------------------------------------------------------------------------------------------------

def _ink(r: int, g: int, b: int) -> str:
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def token_html(tokens: Sequence[str], values: Any = None, cmap: str | None = None, scale: Scale | None = None,
               legend: bool = True) -> str:
    """The caption's tokens as HTML, each word shaded by its value on `scale` (default: from the words'
    smallest value to their largest) with the value written beneath it, and, with `legend`, the scale's
    colour bar after them; BOS / EOS are shown dimmed and unshaded, their values on hover only."""
    values = None if values is None else as_array(values)[:len(tokens)]
    words = word_positions(tokens)
    if values is not None and words:
        scale = _scale(values[words], scale, cmap).on_white()
        colours = dict(zip(words, scale.colours(values[words]).tolist()))
    else:
        colours = {}
    spans = []
    for k, token in enumerate(tokens):
        title = "" if values is None else f' title="{values[k]:.4g}"'
        text = html.escape(token)
        if k in colours:
            r, g, b = colours[k]
            style = (f"background:rgb({r},{g},{b});color:{_ink(r, g, b)};padding:1px 3px;border-radius:3px;"
                     "display:inline-block;text-align:center;line-height:1.2")
            text += f'<br><small>{html.escape(scale.format(float(values[k])))}</small>'
        else:
            style = "color:#999;font-size:80%"
        spans.append(f'<span style="{style}"{title}>{text}</span>')
    bar = colour_bar_html(scale, f"words: {scale.label}") if legend and colours else ""
    return f'<div style="line-height:1.9;font-family:monospace">{" ".join(spans)}{bar}</div>'


def colour_bar_html(scale: Scale, label: str | None = None, width: int = 140) -> str:
    """The scale as an HTML colour bar: low end, gradient, high end, and what the value is (`label`, default
    the scale's)."""
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in scale.table()[[*range(0, 256, 32), 255], :3].tolist())
    return (f'<div style="font:11px sans-serif;color:#333;margin-top:4px">{html.escape(scale.format(scale.low))} '
            f'<span style="display:inline-block;width:{width}px;height:10px;vertical-align:middle;'
            f'background:linear-gradient(to right, {stops})"></span> {html.escape(scale.format(scale.high))}'
            f' <i>{html.escape(scale.label if label is None else label)}</i></div>')


def probabilities(logits: Any, scoring: str = "softmax") -> np.ndarray:
    """Each caption's probability from its logit: a softmax over the captions, or each one's own sigmoid."""
    logits = as_array(logits).astype(np.float64)
    if scoring == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    if scoring == "softmax":
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()
    raise ValueError(f"scoring must be 'softmax' or 'sigmoid', got {scoring!r}")


def scores_table(texts: Sequence[str], logits: Any, selected: str | None = None, scoring: str = "softmax") -> str:
    """Each caption's logit and its probability, as an HTML table: a softmax over the captions, or with
    scoring="sigmoid" (SigLIP's; `model.config.scoring` says which) each caption's own sigmoid."""
    logits = as_array(logits).astype(np.float64)
    probs = probabilities(logits, scoring)
    weight = {True: "bold", False: "normal"}
    rows = "".join(f'<tr style="font-weight:{weight[t == selected]}"><td>{html.escape(t)}</td>'
                   f'<td style="text-align:right">{v:.2f}</td><td style="text-align:right">{p:.1%}</td></tr>'
                   for t, v, p in zip(texts, logits, probs))
    return f"<table><tr><th>caption</th><th>logit</th><th>p</th></tr>{rows}</table>"


# --- labelled pictures -----------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _font(size: int = 11) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, the font matplotlib ships and draws its figures in, so both kinds of picture read alike."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def _text_size(text: str, size: int = 11) -> tuple[int, int]:
    left, top, right, bottom = _font(size).getbbox(text)
    return int(right - left), int(bottom - top)


def colour_bar(scale: Scale, width: int, size: int = 11) -> Image.Image:
    """The scale as a horizontal colour bar `width` pixels wide, its ticks written beneath and what the value
    is beside them, on white."""
    bar_h, tick = max(8, size), max(3, size // 3)
    left = right = max(_text_size(scale.format(t), size)[0] for t in scale.ticks) // 2 + 2
    length = max(width - left - right, 16)
    out = Image.new("RGB", (length + left + right, bar_h + tick + 2 * size + 8), "white")
    ramp = scale.table()[np.linspace(0, 255, length).round().astype(np.uint8), :3]
    out.paste(Image.fromarray(np.repeat(ramp[None], bar_h, 0)), (left, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle([left - 1, 0, left + length, bar_h - 1], outline=(90, 90, 90))
    for value in scale.ticks:
        x = left + round((value - scale.low) / (scale.high - scale.low) * (length - 1))
        draw.line([x, bar_h, x, bar_h + tick], fill="black")
        draw.text((x, bar_h + tick + 1), scale.format(value), fill="black", font=_font(size), anchor="ma")
    draw.text((out.width // 2, bar_h + tick + size + 5), _fit(scale.label, out.width, size), fill=(60, 60, 60),
              font=_font(size), anchor="ma")
    return out


def labelled(picture: Image.Image, scale: Scale | None = None, title: Sequence[str] = (),
             note: str | None = None, size: int | None = None) -> Image.Image:
    """The picture with `title` lines above it (the first one bold-ish: larger) and, beneath it, the scale's
    colour bar and a `note`, on white; text sized to the picture (`size` pixels, default from its width)."""
    size = size or int(np.clip(picture.width / 32, 11, 40))
    lines = [(text, size + 2 if k == 0 else size) for k, text in enumerate(title)]
    # as wide as the picture, or as its title (up to 40 characters' worth) and a readable colour bar need
    width = max([picture.width, 10 * size] + [min(_text_size(t, s)[0], 20 * size) + 8 for t, s in lines])
    header = sum(s + 6 for _, s in lines) + (4 if lines else 0)
    bar = colour_bar(scale, min(width, 30 * size), size) if scale is not None else None
    footer = (bar.height + 6 if bar is not None else 0) + (size + 8 if note else 0)
    out = Image.new("RGB", (width, header + picture.height + footer), "white")
    draw = ImageDraw.Draw(out)
    y = 4
    for text, s in lines:
        draw.text((width // 2, y), _fit(text, width - 8, s), fill="black", font=_font(s), anchor="ma")
        y += s + 6
    out.paste(picture, ((width - picture.width) // 2, header))
    y = header + picture.height + 6
    if bar is not None:
        out.paste(bar, ((width - bar.width) // 2, y))
        y += bar.height
    if note:
        draw.text((width // 2, y + 2), _fit(note, width - 8, size), fill=(60, 60, 60), font=_font(size), anchor="ma")
    return out


def explanation_card(original: Image.Image, exp: Explanation, i: int, j: int, scoring: str | None = None,
                     scale: Scale | None = None, alpha: float = ALPHA) -> Image.Image:
    """Image i's map for caption j over the original image, the crop the model saw outlined, titled with the
    caption, its score and the method with its non-default options, and the scale's colour bar beneath
    (default scale: shared by all the Explanation's pairs, so a weak pair looks weak). The command line's PNG."""
    scale = scale or image_scale(exp)
    crop = exp.crop_boxes[i] if exp.crop_boxes is not None else None
    # one caption's full-size maps at a time: a big photo's maps for every caption would not fit in memory
    picture = overlay(original, exp.pixel_maps(original=True, text=j)[i][0], alpha=alpha, scale=scale, crop=crop)
    cropped = crop is not None and not _covers(crop, picture.size)
    return labelled(picture, scale, pair_title(exp, i, j, scoring),
                    note="outlined: the part of the image the model saw" if cropped else None)


def grid(cells: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = ()) -> Image.Image:
    """Equal-sized cells in rows and columns on white, with optional labels left of each row (one or more lines)
    and above each column."""
    cell_w, cell_h = cells[0][0].size
    n_cols = max(len(row) for row in cells)
    line_h = _text_size("Ag")[1] + 3
    label_w = max((_text_size(line)[0] for t in row_labels for line in t.split("\n")), default=-PAD) + PAD
    label_h = max((_text_size(t)[1] for t in col_labels), default=-PAD) + PAD
    size = (label_w + n_cols * (cell_w + PAD) - PAD, label_h + len(cells) * (cell_h + PAD) - PAD)
    out = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(out)
    for c, text in enumerate(col_labels):
        draw.text((label_w + c * (cell_w + PAD), 0), _fit(text, cell_w), fill="black", font=_font())
    for r, row in enumerate(cells):
        y = label_h + r * (cell_h + PAD)
        if r < len(row_labels):
            lines = row_labels[r].split("\n")
            for k, line in enumerate(lines):  # the lines centred on the row, one under the other
                middle = y + cell_h // 2 + round((k - (len(lines) - 1) / 2) * line_h)
                draw.text((0, middle), line, fill="black", font=_font(), anchor="lm")
        for c, cell in enumerate(row):
            out.paste(cell, (label_w + c * (cell_w + PAD), y))
    return out


def _fit(text: str, width: int, size: int = 11) -> str:
    """The text cut with an ellipsis so it fits `width` pixels."""
    while len(text) > 1 and _text_size(text, size)[0] > width:
        text = text[:-2] + "…"
    return text


def _stack(*pictures: Image.Image) -> Image.Image:
    """Pictures one under the other, left-aligned, on white."""
    out = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    y = 0
    for picture in pictures:
        out.paste(picture, (0, y))
        y += picture.height
    return out


def _line(text: str, width: int) -> Image.Image:
    """A line of text `width` pixels wide, on white."""
    out = Image.new("RGB", (width, 14), "white")
    ImageDraw.Draw(out).text((2, 1), _fit(text, width - 2), fill="black", font=_font())
    return out


def explanation_grid(explanations: Mapping[str, "Explanation"], image: int = 0, size: int = 160,
                     cmap: str | None = None, alpha: float = ALPHA, scale: str = "shared") -> Image.Image:
    """Methods (rows) x captions (columns) for one image: `{label: clipx.explain(...)}` of the same captions.
    Each row is drawn on its method's scale: scale="shared", one for all its pairs, so a weak caption looks
    weak, its colour bar closing the row; "panel", one per cell, its colour bar beneath the cell. Each cell
    is labelled with its score, each row with its label and the method with its non-default options."""
    if scale not in ("shared", "panel"):
        raise ValueError(f"scale must be 'shared' or 'panel', got {scale!r}")
    texts = _common_captions(explanations, image)
    rows, labels = [], []
    for label, exp in explanations.items():
        picture = Image.fromarray(exp.images[image].numpy()).resize((size, size), Image.BILINEAR)
        shared = image_scale(exp, cmap=cmap)
        cells = []
        for j in range(exp.n_texts):
            own = shared if scale == "shared" else image_scale(exp, (image, j), cmap)
            parts = [overlay(picture, exp.image[image, j], alpha=alpha, scale=own),
                     _line(score_title(exp.scores[image], j), size)]
            cells.append(_stack(*parts, colour_bar(own, size, 9)) if scale == "panel" else _stack(*parts))
        if scale == "shared":
            cells.append(_legend_cell(shared, cells[0].size))
        rows.append(cells)
        title = method_title(exp.method, exp.options)
        labels.append(label if title == label else f"{label}\n{title}")
    return grid(rows, labels, texts)


def _common_captions(explanations: Mapping[str, "Explanation"], image: int) -> list[str]:
    """The captions every explanation holds, in one order: columns are labelled once, for all rows."""
    if not explanations:
        raise ValueError("explanation_grid needs at least one explanation: {label: clipx.explain(...)}")
    (first_label, first), *rest = explanations.items()
    for label, exp in rest:
        if len(exp.images) != len(first.images):
            raise ValueError(f"explanation_grid: {label!r} explains {len(exp.images)} image(s), {first_label!r} "
                             f"{len(first.images)}; every row must explain the same images")
        if list(exp.texts) != list(first.texts):
            raise ValueError(f"explanation_grid: {label!r} explains the captions {list(exp.texts)}, {first_label!r} "
                             f"{list(first.texts)}; every row must explain the same captions in the same order")
    if not -len(first.images) <= image < len(first.images):
        raise ValueError(f"explanation_grid: image {image} is out of range: the explanations hold "
                         f"{len(first.images)} image(s)")
    return list(first.texts)


def _legend_cell(scale: Scale, size: tuple[int, int]) -> Image.Image:
    """A grid cell holding the scale's colour bar, centred."""
    cell = Image.new("RGB", size, "white")
    bar = colour_bar(scale, size[0] - 2 * PAD, 10)
    cell.paste(bar, (PAD, max(0, (size[1] - bar.height) // 2)))
    return cell


def heads_grid(image: Image.Image, maps: Any, cmap: str | None = None, alpha: float = ALPHA,
               scale: Scale | None = None) -> Image.Image:
    """Layers (rows) x heads (columns): maps [n_layers, n_heads, grid_h, grid_w], e.g. the class
    token's attention to the patches, each overlaid on the image, all on one scale (default: from the
    smallest value to the largest; pass `Scale.fit(maps, "positive", "attention weight")` for attention),
    its colour bar beneath."""
    maps = as_array(maps)
    scale = _scale(maps, scale, cmap)
    cells = [[overlay(image, head, alpha=alpha, scale=scale) for head in layer] for layer in maps]
    table = grid(cells, [f"layer {i}" for i in range(len(maps))], [f"head {h}" for h in range(maps.shape[1])])
    return labelled(table, scale, size=11)


def matrix(values: Any, labels: Sequence[str], cmap: str | None = None, cell: int = 18,
           scale: Scale | None = None) -> Image.Image:
    """A square matrix (e.g. token-to-token attention, queries as rows) as a heatmap on `scale` (default:
    from its smallest value to its largest) with each row labelled on the left and each column above
    (rotated), and the scale's colour bar beneath."""
    values = as_array(values)
    scale = _scale(values, scale, cmap)
    heat = Image.fromarray(scale.colours(values)).resize((values.shape[1] * cell, values.shape[0] * cell),
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
    return labelled(out, scale, size=11)
