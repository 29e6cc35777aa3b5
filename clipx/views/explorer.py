"""`Explorer`: one image, one caption, one method at a time, and any new caption you type."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import torch
from PIL import Image

from ..explain import method_options, methods
from ..explain.legend import image_scale, method_title, text_scale
from ..model.clip import CLIP
from .base import View
from .cache import Explanations
from .render import colour_bar_html, scores_table, token_html


class Explorer(View):
    """Pick an image, a caption (or type a new one and press Enter) and a method: the image map
    over the image, beside the caption's token relevance and every caption's score."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], method: str = "relevance",
                 cmap: str | None = None, size: int = 224) -> None:
        method_options(method)  # an unknown name fails here, clearly, not as the toggle's TraitError
        super().__init__(model, images, texts, cmap, size)
        self.results = Explanations(model, self.pixel_values, self.texts, self.progress)
        self.method = widgets.ToggleButtons(options=methods(), value=method, description="method")
        self.new_caption = widgets.Text(placeholder="type a caption, press Enter", continuous_update=False)
        self.new_caption.observe(self._add_caption, "value")
        self.build([[self.image_choice, self.caption_choice, self.new_caption], [self.method], [self.opacity]],
                   watch=[self.image_choice, self.caption_choice, self.method, self.opacity])

    def _add_caption(self, change: dict) -> None:
        text = change["new"].strip()
        if not text:
            return
        if text not in self.texts:
            self.texts.append(text)
            with self.holding():
                self.caption_choice.options = self.texts
        self.caption_choice.value = text  # re-renders, computing the new caption's maps

    def render(self) -> tuple[Image.Image, str]:
        i, text, method = self.image_choice.value, self.caption_choice.value, self.method.value
        exp, j = self.results.get(method, text)
        # one scale for every pair explained together, so a caption that does not match looks weak
        scale = None if exp.image is None else image_scale(exp)
        picture = self.overlay(i, None if exp.image is None else exp.image[i, j], scale)
        header = f"<p><b>{html.escape(method_title(exp.method, exp.options))}</b></p>"
        legend = "" if scale is None else colour_bar_html(scale)
        tokens = ("" if exp.text is None else
                  token_html(exp.tokens[j], exp.text[i, j], self.cmap, text_scale(exp)))
        logits = torch.stack([e.scores[i, k] for e, k in (self.results.get(method, t) for t in self.texts)])
        return picture, (header + legend + tokens
                         + scores_table(self.texts, logits, selected=text, scoring=self.model.config.scoring))
