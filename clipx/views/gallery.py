"""`Gallery`: search an image index by caption; the hits as thumbnails, with relevance overlays, and any
hit opened in an Explorer below."""

from __future__ import annotations

import base64
import html
from typing import Any

import ipywidgets as widgets
from PIL import Image, ImageDraw

from ..explain import Explanation
from ..explain.legend import ALPHA, image_scale
from ..apps.index import Hits, Index
from .explorer import Explorer
from .render import _font, grid, labelled, overlay, to_png

PER_ROW = 8


def hits_grid(hits: Hits, explanation: Explanation | None = None, size: int = 96, cmap: str | None = None,
              alpha: float = ALPHA) -> Image.Image:
    """The hits as the model saw them (preprocessed), best first, PER_ROW to a row, each labelled with its
    rank and score; with `explanation` (`hits.explain()`), each hit's map over it, all on one scale (a weak
    hit looks weak), its colour bar beneath."""
    scale = None if explanation is None else image_scale(explanation, cmap=cmap)
    if explanation is not None:  # the hits as it preprocessed them: no file is read again
        pictures = [Image.fromarray(image.numpy()) for image in explanation.images]
    else:
        model = hits.index.model
        pictures = model.processor.to_pil(model.preprocess(hits.paths))
    cells = []
    for i, (hit, picture) in enumerate(zip(hits, pictures)):
        picture = picture.resize((size, size), Image.BILINEAR)
        if explanation is not None:
            picture = overlay(picture, explanation.image[i, 0], alpha=alpha, scale=scale)
        cell = Image.new("RGB", (size, size + 14), "white")
        cell.paste(picture, (0, 0))
        ImageDraw.Draw(cell).text((2, size + 1), f"#{hit.rank}  {hit.score:.2f}", fill="black", font=_font())
        cells.append(cell)
    table = grid([cells[k:k + PER_ROW] for k in range(0, len(cells), PER_ROW)])
    return table if scale is None else labelled(table, scale, size=11)


class Gallery(widgets.VBox):
    """Type a caption (Enter), choose how many hits: the best images of the index, each with the
    explanation method's map for the query (`overlays`); a hit's button opens the Explorer for that
    image and the query below. Pass an `Index`, or a model and `images` (a folder or paths) to index."""

    def __init__(self, index_or_model: Any, images: Any = None, query: str = "", k: int = 8,
                 method: str = "relevance", overlays: bool = True, cmap: str | None = None, size: int = 96) -> None:
        super().__init__()
        if isinstance(index_or_model, Index):
            self.index = index_or_model
        elif images is None:
            raise ValueError("Gallery(model, images): pass the images to index (a folder or paths), or an Index")
        else:
            self.index = Index.build(index_or_model, images, progress=False)
        self.method, self.cmap, self.size = method, cmap, size
        self.query = widgets.Text(value=query, placeholder="type a caption, press Enter", continuous_update=False,
                                  description="query", layout=widgets.Layout(width="360px"))
        self.k = widgets.IntSlider(value=min(k, len(self.index)), min=1, max=len(self.index), description="k")
        self.overlays = widgets.Checkbox(value=overlays, description=f"{method} overlays")
        self.status = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.buttons = widgets.HBox()
        self.below = widgets.VBox()
        self.explorer: Explorer | None = None
        self.hits: Hits | None = None
        self._explained: dict[tuple[str, int], Explanation] = {}
        self.children = [widgets.HBox([self.query, self.k, self.overlays]), self.status, self.picture,
                         self.buttons, self.below]
        for control in (self.query, self.k, self.overlays):
            control.observe(self.refresh, "value")
        self.refresh()

    def refresh(self, _change: Any = None) -> None:
        text = self.query.value.strip()
        if not text:
            self.hits, self.buttons.children = None, []
            self.picture.value = to_png(Image.new("RGB", (self.size, self.size), "white"))
            self.status.value = "<i>type a caption and press Enter</i>"
            return
        self.hits = self.index.search(text, k=self.k.value)
        explanation = None
        if self.overlays.value:
            key = (text, self.k.value)
            if key not in self._explained:
                self.status.value = f"<i>explaining {len(self.hits)} hits…</i>"
                self._explained[key] = self.hits.explain(method=self.method)
            explanation = self._explained[key]
        self.status.value = f"{html.escape(text)}: the {len(self.hits)} best of {len(self.index)} images"
        self.picture.value = to_png(hits_grid(self.hits, explanation, self.size, self.cmap))
        buttons = []
        for hit in self.hits:
            button = widgets.Button(description=f"open {hit.rank}", tooltip=hit.path,
                                    layout=widgets.Layout(width="72px"))
            button.on_click(lambda _b, rank=hit.rank: self.open_hit(rank))
            buttons.append(button)
        self.buttons.children = buttons

    def open_hit(self, rank: int) -> Explorer:
        """The Explorer of hit `rank` (1 = best) and the query, shown below the hits."""
        hit = self.hits[rank - 1]
        self.explorer = Explorer(self.index.model, [hit.path], [self.query.value.strip()], method=self.method)
        self.below.children = [self.explorer]
        return self.explorer

    # --- static fallbacks, as every view has ---------------------------------------------------------
    def _repr_png_(self) -> bytes:
        return bytes(self.picture.value)

    def _repr_html_(self) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(self.picture.value).decode()}"/>'

    def __repr__(self) -> str:
        return f"Gallery({len(self.index)} images, query {self.query.value.strip()!r}, k={self.k.value})"
