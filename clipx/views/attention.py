"""`AttentionView`: raw attention patterns, any tower, layer and head."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..explain.legend import Scale
from ..model.clip import CLIP
from .base import View
from .cache import Patterns
from .render import mark_patch, matrix, token_html


class AttentionView(View):
    """In the image tower, the attention from the readout (the class token, or the probe of an
    attention-pooling head) or a chosen patch to every patch; in the text tower, token-to-token
    attention, with one query token's row over the caption. All patterns come from one recorded
    forward; every control only re-renders."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], cmap: str | None = None,
                 size: int = 224) -> None:
        super().__init__(model, images, texts, cmap, size)
        self.patterns = Patterns(model, self.pixel_values, self.texts, self.progress)
        self.tower = widgets.ToggleButtons(options=["vision", "text"], description="tower")
        self.layer = widgets.IntSlider(min=0, description="layer")
        self.head = widgets.Dropdown(description="head")
        self.prefix = model.vision.prefix_tokens
        # a class token is a query of every layer; a pooling head's probe attends once, after the last
        self.readout = "class token" if model.vision.head is None else "pooling probe"
        self.source = widgets.ToggleButtons(options=[self.readout, "patch"], description="from")
        self.row, self.col = self.patch_sliders()
        self.query = widgets.Dropdown(description="query")
        self.vision_only = [self.image_choice, self.source, self.row, self.col, self.opacity]
        self.text_only = [self.caption_choice, self.query]
        self.build([[self.tower, self.image_choice, self.caption_choice], [self.layer, self.head],
                    [self.source, self.row, self.col, self.query], [self.opacity]],
                   watch=[self.tower, self.layer, self.head, *self.vision_only, *self.text_only])

    def render(self) -> tuple[Image.Image, str]:
        vision = self.tower.value == "vision"
        config = getattr(self.model, self.tower.value).config
        self.layer.max = config.num_hidden_layers - 1
        self.set_options(self.head, [("mean", -1)] + [(str(h), h) for h in range(config.num_attention_heads)], -1)
        for control in self.vision_only + self.text_only:
            control.layout.display = None if (control in self.vision_only) == vision else "none"
        head = None if self.head.value < 0 else self.head.value
        return self._image(head) if vision else self._text(head)

    def _image(self, head: int | None) -> tuple[Image.Image, str]:
        i, row, col, p = self.image_choice.value, self.row.value, self.col.value, self.prefix
        from_patch = self.source.value == "patch"
        if from_patch or self.model.vision.head is None:
            pattern = self.patterns.get("vision", self.layer.value, i, head)  # [prefix + patches] x the same
            where = f"layer {self.layer.value}"
        else:
            pattern = self.patterns.get("vision", "head", i, head)  # [1, patches]: the probe's one row
            where = "the pooling head (after the last layer)"
        query = p + row * self.grid[1] + col if from_patch else 0
        weights = pattern[query, p:]
        picture = self.overlay(i, weights.reshape(self.grid), Scale.fit(weights, "positive", "attention weight"))
        if from_patch:
            picture = mark_patch(picture, row, col, self.grid)
        source = f"patch ({row}, {col})" if from_patch else f"the {self.readout}"
        text = f"<p>attention from {source} to every patch, {where}, head {self.head.label}</p>"
        if p:
            text += f"<p>to the class token: {float(pattern[query, 0]):.1%}</p>"
        return picture, text

    def _text(self, head: int | None) -> tuple[Image.Image, str]:
        j = self.texts.index(self.caption_choice.value)
        tokens = self.patterns.tokens[j]
        # EOS by default: the text tower is pooled there
        self.set_options(self.query, [(f"{k}: {t}", k) for k, t in enumerate(tokens)], default=len(tokens) - 1)
        pattern = self.patterns.get("text", self.layer.value, j, head)  # [n_tokens, n_tokens], queries as rows
        q = self.query.value
        scale = Scale.fit(pattern, "positive", "attention weight")  # the matrix and its row alike
        return matrix(pattern, tokens, self.cmap, scale=scale), (
            f"<p>attention from <b>{html.escape(tokens[q])}</b> (row {q}), layer {self.layer.value}, "
            f"head {self.head.label}:</p>" + token_html(tokens, pattern[q], self.cmap, scale))
