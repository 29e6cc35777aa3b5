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
