"""`View`: what every explorer shares.

The inputs are prepared once (pixel values, display pictures, captions); image and caption
pickers and an opacity slider; a status line for long computations; one picture beside an HTML
panel, re-rendered from cached results whenever a watched control changes; and a static
fallback of exactly what is shown, so a notebook without a kernel still shows the view.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..explain.legend import ALPHA, Scale
from ..model.clip import CLIP
from ..model.inputs import prepare_images
from .render import overlay, to_png


class View(widgets.VBox):
    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], cmap: str | None = None,
                 size: int = 224) -> None:
        super().__init__()
        self.model, self.cmap = model, cmap
        self.texts = list(dict.fromkeys([texts] if isinstance(texts, str) else texts))
        if not self.texts:  # the caption dropdown would hold nothing to render
            raise ValueError(f"no captions given to {type(self).__name__}: pass a caption or a non-empty list")
        self.pixel_values = prepare_images(model, images)[0]  # images [B, 3, H, W], NaFlex patches included
        self.pictures = [p.resize((size, size), Image.BILINEAR) for p in model.processor.to_pil(self.pixel_values)]
        self.grid = model.vision.patch_grid(self.pixel_values)
        names = _names(images, len(self.pictures))
        self.image_choice = widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], description="image")
        self.caption_choice = widgets.Dropdown(options=self.texts, description="caption",
                                               layout=widgets.Layout(width="360px"))
        self.opacity = widgets.FloatSlider(value=ALPHA, min=0, max=1, step=0.05, description="opacity")
        self.status = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.panel = widgets.HTML(layout=widgets.Layout(max_width="480px", margin="0 0 0 12px"))
        self._held = False

    def build(self, rows: Sequence[Sequence[widgets.Widget]], watch: Sequence[widgets.Widget]) -> None:
        """Lay out the control rows above the picture and panel, re-render on any change of `watch`, render now."""
        self.children = [*(widgets.HBox(list(row)) for row in rows), self.status,
                         widgets.HBox([self.picture, self.panel])]
        for control in watch:
            control.observe(self.refresh, "value")
        self.refresh()

    def render(self) -> tuple[Image.Image, str]:
        """The picture and the panel's HTML for the controls' current values (subclasses)."""
        raise NotImplementedError

    def refresh(self, _change: Any = None) -> None:
        if self._held:
            return
        with self.holding():
            picture, panel = self.render()
        self.picture.value = to_png(picture)
        self.panel.value = panel

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Control changes inside the block do not re-render: render() itself sets controls
        whose options follow another control (a caption's tokens, a tower's heads)."""
        held, self._held = self._held, True
        try:
            yield
        finally:
            self._held = held

    @contextmanager
    def progress(self, message: str) -> Iterator[None]:
        """Shown in the status line while a long computation runs."""
        self.status.value = f"<i>{html.escape(message)}</i>"
        try:
            yield
        finally:
            self.status.value = ""

    # --- helpers the explorers share ---------------------------------------------------------
    def overlay(self, image: int, heatmap: Any, scale: Scale | None = None) -> Image.Image:
        """Picture `image` with the heatmap over it on `scale` (default: the map's own range)."""
        return overlay(self.pictures[image], heatmap, self.cmap, self.opacity.value, scale=scale)

    def patch_sliders(self) -> tuple[widgets.IntSlider, widgets.IntSlider]:
        """Row and column of a patch on the grid, starting at the centre."""
        return tuple(widgets.IntSlider(value=n // 2, min=0, max=n - 1, description=name)
                     for name, n in zip(("patch row", "patch col"), self.grid))

    @staticmethod
    def set_options(control: widgets.Dropdown, options: list[tuple[str, Any]], default: Any) -> None:
        """Give a dropdown new options where they changed, keeping its value if it is still one of them."""
        if tuple(control.options) == tuple(options):
            return
        value = control.value
        control.options = options
        control.value = value if value in [v for _, v in options] else default

    # --- static fallbacks: nbconvert, GitHub and nbval show these where no kernel runs ----------
    def _repr_png_(self) -> bytes:
        return bytes(self.picture.value)  # the widget holds a memoryview; IPython wants bytes

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.picture.value).decode()
        return (f'<div style="display:flex;align-items:flex-start;gap:12px">'
                f'<img src="data:image/png;base64,{data}"/><div>{self.panel.value}</div></div>')

    def __repr__(self) -> str:  # the text/plain of the widget bundle: short and stable for nbval
        return f"{type(self).__name__}({len(self.pictures)} images x {len(self.texts)} captions)"


def _names(images: Any, n: int) -> list[str]:
    """File names where the images are paths, else "image 0", "image 1", ..."""
    items = images if isinstance(images, (list, tuple)) else [images] * n
    return [Path(im).name if isinstance(im, (str, Path)) else f"image {i}" for i, im in enumerate(items)]
