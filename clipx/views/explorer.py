"""`Explorer`: one image, one caption, one method at a time, the method's options, and any new caption you type."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import torch
from PIL import Image

from ..explain import Explanation, method_options, methods
from ..explain.legend import as_array, image_scale, method_title, text_scale
from ..model.clip import CLIP
from .base import View
from .cache import Explanations
from .controls import INLINE, MethodOptions
from .render import colour_bar_html, mark_patch, probabilities, scores_table, token_html


class Explorer(View):
    """Pick an image, a caption (click its row, or type a new one and press Enter), a method and its options:
    the image map over the image, beside the caption's token relevance and every caption's score. Click the
    picture to pick a patch: each caption's map value there joins its row; hover it to read the map's value."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], method: str = "relevance",
                 cmap: str | None = None, size: int = 448) -> None:
        method_options(method)  # an unknown name fails here, clearly, not as the dropdown's TraitError
        super().__init__(model, images, texts, cmap, size)
        self.results = Explanations(model, self.pixel_values, self.texts, self.progress)
        self.method = widgets.Dropdown(options=methods(), value=method, description="method", style=INLINE,
                                       layout=widgets.Layout(width="auto"))
        self.options = MethodOptions(method)
        self.method.observe(self._new_method, "value")  # before build's refresh: the new method's options first
        self.new_caption = widgets.Text(placeholder="type a caption, press Enter", continuous_update=False,
                                        layout=widgets.Layout(width="auto", min_width="300px"))
        self.new_caption.observe(self._add_caption, "value")
        self.captions_header = widgets.HTML()  # what the caption list's columns are
        self.build([[self.image_choice, self.method, self.opacity], [self.options]],
                   watch=[self.image_choice, self.caption_choice, self.method, self.options, self.opacity],
                   side=[self.captions_header, self.caption_choice, self.new_caption])

    def _new_method(self, change: dict) -> None:
        with self.holding():
            self.options.show(change["new"])

    def _add_caption(self, change: dict) -> None:
        text = change["new"].strip()
        if not text:
            return
        if text not in self.texts:
            self.texts.append(text)
            with self.holding():
                self.caption_choice.options = self.texts
                self.caption_choice.rows = min(len(self.texts), 8)
        self.caption_choice.value = text  # re-renders, computing the new caption's maps

    def explained(self, text: str) -> tuple[Explanation, int]:
        """The method's explanation holding `text` with the options given; where the method refuses them, its
        defaults', the refusal written beside the options."""
        method, given = self.method.value, self.options.value
        try:
            return self.results.get(method, text, **given)
        except (TypeError, ValueError) as error:
            if not given:
                raise
            self.options.error.value = f'<span style="color:#b00">{html.escape(str(error))}</span>'
            return self.results.get(method, text)

    def render(self) -> tuple[Image.Image, str]:
        i, text, patch = self.image_choice.value, self.caption_choice.value, self.patch
        pairs = [self.explained(t) for t in self.texts]
        exp, j = pairs[self.texts.index(text)]
        # one scale for every pair explained together, so a caption that does not match looks weak
        scale = None if exp.image is None else image_scale(exp)
        self.point(None if exp.image is None else exp.image[i, j], scale)
        picture = self.overlay(i, None if exp.image is None else exp.image[i, j], scale)
        if exp.image is not None:
            picture = mark_patch(picture, *patch, self.grid)
        header = f"<p><b>{html.escape(method_title(exp.method, exp.options))}</b></p>"
        legend = "" if scale is None else colour_bar_html(scale)
        tokens = ("" if exp.text is None else
                  token_html(exp.tokens[j], exp.text[i, j], self.cmap, text_scale(exp)))
        logits = torch.stack([e.scores[i, k] for e, k in pairs])
        here = None if exp.image is None else [value_at(e.image[i, k], patch, self.grid) for e, k in pairs]
        scoring = self.model.config.scoring
        self.set_options(self.caption_choice, caption_rows(self.texts, logits, scoring, here, scale), default=text)
        self.captions_header.value = (f"<small>{'p' if scoring == 'softmax' else 'sigmoid'} · logit"
                                      f"{'' if here is None else f' · map at patch {patch}'} · caption</small>")
        self.static = scores_table(self.texts, logits, selected=text, scoring=scoring)
        return picture, header + legend + tokens


def value_at(values: Any, patch: tuple[int, int], grid: tuple[int, int]) -> float:
    """A map's value (any resolution) at the centre of `patch` on the patch grid."""
    values = as_array(values)
    h, w = values.shape
    return float(values[int((patch[0] + 0.5) * h / grid[0]), int((patch[1] + 0.5) * w / grid[1])])


def caption_rows(texts: Sequence[str], logits: Any, scoring: str, here: Sequence[float] | None,
                 scale: Any) -> list[tuple[str, str]]:
    """(label, caption) options of the caption list: the caption's probability and logit, and its map's value
    at the picked patch."""
    probs = probabilities(logits, scoring)
    logits = as_array(logits)
    rows = []
    for k, text in enumerate(texts):
        at = "" if here is None else f"  ·  {scale.format(here[k])}"
        rows.append((f"{probs[k]:6.1%}  ·  {float(logits[k]):.2f}{at}  ·  {text}", text))
    return rows

