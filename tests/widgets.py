"""Reading the ipywidgets views headless: the bytes of their picture, and whether a control changes it."""

from __future__ import annotations

import io

from PIL import Image


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def changes(view, control, value, what="picture") -> bool:
    """Whether setting `control` to `value` changes the view's picture bytes (or panel HTML)."""
    before = bytes(view.picture.value) if what == "picture" else view.panel.value
    control.value = value
    return (bytes(view.picture.value) if what == "picture" else view.panel.value) != before


def event(view, patch, kind="click", where=(0.5, 0.5)):
    """The message ipyevents sends for a pointer at `where` (fractions of a cell) inside `patch` (row, col) of
    the view's patch grid: dataX / dataY are pixels of the picture as sent, as its ImageView computes them."""
    (width, height), (rows, cols) = view.shown, view.grid
    x, y = (patch[1] + where[1]) * width / cols, (patch[0] + where[0]) * height / rows
    return {"type": kind, "dataX": round(x), "dataY": round(y), "relativeX": round(x), "relativeY": round(y),
            "boundingRectWidth": width, "boundingRectHeight": height}


def click(view, patch, what="picture") -> bool:
    """Whether a click on `patch` of the view's picture changes its picture bytes (or panel HTML)."""
    before = bytes(view.picture.value) if what == "picture" else view.panel.value
    view.clicked(event(view, patch))
    return (bytes(view.picture.value) if what == "picture" else view.panel.value) != before
