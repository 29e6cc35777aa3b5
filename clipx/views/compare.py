"""`Compare`: several explanation methods side by side for one image and caption."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..explain import method_options
from ..explain import methods as registered
from ..explain.legend import image_scale, text_scale
from ..model.clip import CLIP
from .base import View
from .cache import Explanations
from .render import colour_bar_html, grid, token_html


class Compare(View):
    """The chosen methods' image maps in a row, and each one's token relevance beside them."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], methods: Sequence[str] | None = None,
                 cmap: str | None = None, size: int = 160) -> None:
        for method in methods or ():
            method_options(method)  # an unknown name fails here, clearly, not as the selector's TraitError
        super().__init__(model, images, texts, cmap, size)
        self.results = Explanations(model, self.pixel_values, self.texts, self.progress)
        self.methods = widgets.SelectMultiple(options=registered(), value=tuple(methods or registered()),
                                              description="methods", rows=4)
        controls = [self.image_choice, self.caption_choice, self.methods, self.opacity]
        self.build([controls[:2], controls[2:]], watch=controls)

    def render(self) -> tuple[Image.Image, str]:
        i, text = self.image_choice.value, self.caption_choice.value
        cells, rows = [], []
        for method in self.methods.value:
            exp, j = self.results.get(method, text)
            scale = None if exp.image is None else image_scale(exp)  # each method in its own units
            cells.append(self.overlay(i, None if exp.image is None else exp.image[i, j], scale))
            legend = "" if scale is None else colour_bar_html(scale)
            tokens = "" if exp.text is None else token_html(exp.tokens[j], exp.text[i, j], self.cmap, text_scale(exp))
            rows.append(f"<tr><td>{html.escape(method)}</td><td>{legend}{tokens}</td></tr>")
        if not cells:
            return self.pictures[i], "<p>choose one or more methods</p>"
        logit = float(exp.scores[i, j])  # the same model's logit, whichever method
        return grid([cells], col_labels=self.methods.value), f"<p>logit {logit:.2f}</p><table>{''.join(rows)}</table>"
