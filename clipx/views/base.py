"""`View`: what every explorer shares.

The inputs are prepared once (pixel values, display pictures, captions); an image picker, a list of
captions picked with one click, and an opacity slider; a status line for long computations; one
picture beside a panel, re-rendered from cached results whenever a watched control changes; the
picture pointed at (ipyevents: a click picks a patch, hovering shows the map's value there); and a
static fallback of exactly what is shown, so a notebook without a kernel still shows the view.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from ipyevents import Event
from PIL import Image

from ..explain.legend import ALPHA, Scale, as_array
from ..model.clip import CLIP
from ..model.inputs import prepare_images
from .controls import INLINE
from .render import overlay, to_png


HINT = "<small>click the picture to pick a patch; hover to read the map</small>"


class View(widgets.VBox):
    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], cmap: str | None = None,
                 size: int = 448) -> None:
        super().__init__()
        self.model, self.cmap = model, cmap
        self.texts = list(dict.fromkeys([texts] if isinstance(texts, str) else texts))
        if not self.texts:  # the caption dropdown would hold nothing to render
            raise ValueError(f"no captions given to {type(self).__name__}: pass a caption or a non-empty list")
        self.pixel_values = prepare_images(model, images)[0]  # images [B, 3, H, W], NaFlex patches included
        self.pictures = [enlarged(p, size) for p in model.processor.to_pil(self.pixel_values)]
        self.grid = model.vision.patch_grid(self.pixel_values)
        names = _names(images, len(self.pictures))
        self.image_choice = widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], description="image",
                                             style=INLINE, layout=widgets.Layout(width="auto"))
        # a list box, not a dropdown: every caption in view, one click picks one
        self.caption_choice = widgets.Select(options=self.texts, rows=min(len(self.texts), 8),
                                             layout=widgets.Layout(width="auto", min_width="300px"))
        self.opacity = widgets.FloatSlider(value=ALPHA, min=0, max=1, step=0.05, description="opacity",
                                           style=INLINE, layout=widgets.Layout(width="260px"))
        self.status = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.hover = widgets.HTML()
        self.panel = widgets.HTML()
        self.static = ""  # what the side controls show, as HTML, for the static fallback
        self.patch = tuple(n // 2 for n in self.grid)  # the picked patch, (row, col): the centre until clicked
        self.pointed: tuple[Any, Scale | None] | None = None  # the map under the picture and its scale, for hover
        for widget, name in ((self.picture, "picture"), (self.hover, "hover"), (self.caption_choice, "captions")):
            widget.add_class(f"clipx-{name}")  # names the page's tests (and a user's CSS) can find them by
        # clicks arrive as they happen; moves at most every 80 ms, so hovering does not queue up messages
        self.clicks = Event(source=self.picture, watched_events=["click"])
        self.moves = Event(source=self.picture, watched_events=["mousemove", "mouseleave"], wait=80,
                           throttle_or_debounce="throttle")
        self.clicks.on_dom_event(self.clicked)
        self.moves.on_dom_event(self.moved)
        self._held = False

    def build(self, rows: Sequence[Sequence[widgets.Widget]], watch: Sequence[widgets.Widget],
              side: Sequence[widgets.Widget] = ()) -> None:
        """Lay out the control rows above the picture and the panel, with the `side` controls under the panel;
        re-render on any change of `watch`, render now."""
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        self.children = [*(widgets.HBox(list(r), layout=row) for r in rows), self.status,
                         # the panel goes beneath the picture where the page is too narrow for both side by side
                         widgets.HBox([widgets.VBox([self.picture, self.hover]),
                                       widgets.VBox([self.panel, *side],
                                                    layout=widgets.Layout(flex="1 1 300px", max_width="520px",
                                                                          margin="0 0 0 12px"))],
                                      layout=widgets.Layout(flex_flow="row wrap"))]
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
        self.shown = picture.size

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

    # --- pointing at the picture ----------------------------------------------------------------
    def at(self, event: dict, shape: tuple[int, int]) -> tuple[int, int] | None:
        """The cell (row, col) of a `shape` grid laid over the picture under an ipyevents event (its `dataX`,
        `dataY`: pixels of the picture as sent, whatever size the page shows it at); None off the picture."""
        x, y = event.get("dataX"), event.get("dataY")
        if x is None or y is None or not (0 <= x <= self.shown[0] and 0 <= y <= self.shown[1]):
            return None
        return (min(int(y / self.shown[1] * shape[0]), shape[0] - 1),
                min(int(x / self.shown[0] * shape[1]), shape[1] - 1))

    def clicked(self, event: dict) -> None:
        """A click on the picture picks the patch under it, in views whose picture is the image."""
        patch = self.at(event, self.grid) if self.pointed is not None else None
        if patch is not None and patch != self.patch:
            self.patch = patch
            self.refresh()

    def moved(self, event: dict) -> None:
        """Hovering writes the shown map's value under the pointer, and which patch it is, beneath the picture."""
        if self.pointed is None:
            return
        values, scale = self.pointed
        cell = self.at(event, values.shape) if event.get("type") != "mouseleave" else None
        patch = self.at(event, self.grid) if cell is not None else None
        if cell is None or patch is None:
            self.hover.value = HINT
            return
        value = float(values[cell])
        text = f"{value:.4g}" if scale is None else f"{scale.format(value)} ({value:.4g}) {scale.label}"
        self.hover.value = f"<small>patch {patch}: {html.escape(text)}</small>"

    def point(self, values: Any, scale: Scale | None) -> None:
        """The map the picture now shows ([h, w], any resolution), which hovering reads; None: the picture is not
        the image, so there is nothing to point at."""
        self.pointed = None if values is None else (as_array(values), scale)
        if values is None or not self.hover.value:
            self.hover.value = "" if values is None else HINT

    # --- helpers the explorers share ---------------------------------------------------------
    def overlay(self, image: int, heatmap: Any, scale: Scale | None = None) -> Image.Image:
        """Picture `image` with the heatmap over it on `scale` (default: the map's own range)."""
        return overlay(self.pictures[image], heatmap, self.cmap, self.opacity.value, scale=scale)

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
                f'<img src="data:image/png;base64,{data}"/><div>{self.panel.value}{self.static}</div></div>')

    def __repr__(self) -> str:  # the text/plain of the widget bundle: short and stable for nbval
        return f"{type(self).__name__}({len(self.pictures)} images x {len(self.texts)} captions)"


def enlarged(picture: Image.Image, size: int) -> Image.Image:
    """The picture `size` pixels square: a small one enlarged without blur (nearest), so its patches show as the
    model saw them; a large one shrunk smoothly."""
    resample = Image.NEAREST if size >= max(picture.size) else Image.LANCZOS
    return picture.resize((size, size), resample)


def _names(images: Any, n: int) -> list[str]:
    """File names where the images are paths, else "image 0", "image 1", ..."""
    items = images if isinstance(images, (list, tuple)) else [images] * n
    return [Path(im).name if isinstance(im, (str, Path)) else f"image {i}" for i, im in enumerate(items)]
