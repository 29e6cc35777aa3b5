"""`TokenPatchView`: which patches match a caption's token, and which tokens match a patch."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..explain.legend import Scale, map_values, word_positions
from ..explain.method.similarity import VARIANTS, check_variant
from ..model.clip import CLIP
from .base import View
from .cache import Explanations
from .controls import INLINE, TokenButtons
from .render import mark_patch, token_html


class TokenPatchView(View):
    """Token-to-patch similarity (the "similarity" method's token_maps): click a caption's token to see the
    patches that match it; click a patch on the picture to see the tokens that match that patch.
    `variant` picks the patch features: "maskclip" (default; they localise), the plain last-layer "tokens", or
    the training-free dense-map papers' last block ("sclip", "clearclip", "naclip"; see `similarity`)."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], variant: str = "maskclip",
                 cmap: str | None = None, size: int = 448) -> None:
        check_variant(variant)  # before the dropdown below would refuse it less clearly
        super().__init__(model, images, texts, cmap, size)
        self.results = Explanations(model, self.pixel_values, self.texts, self.progress)
        self.token = TokenButtons()
        self.token.value = -1  # none chosen yet: render starts on the caption's last word
        self.variant = widgets.Dropdown(options=VARIANTS, value=variant, description="patches", style=INLINE,
                                       layout=widgets.Layout(width="auto"))
        self.build([[self.image_choice, self.variant, self.opacity]],
                   watch=[self.image_choice, self.caption_choice, self.token, self.variant, self.opacity],
                   side=[self.token, self.caption_choice])

    def render(self) -> tuple[Image.Image, str]:
        i, (row, col) = self.image_choice.value, self.patch
        exp, j = self.results.get("similarity", self.caption_choice.value, variant=self.variant.value)
        tokens = exp.tokens[j]
        k = self.token.value
        if not 0 <= k < len(tokens) or tokens != self.token.tokens:
            # the last word: a caption's noun, where "a" (its first) matches every patch alike
            k = (word_positions(tokens) or [len(tokens) - 1])[-1]
        maps = exp.token_maps[i, j, :len(tokens)]  # [tokens, grid_h, grid_w]
        scale = Scale.of(maps, map_values("similarity"))  # the maps and the tokens' row alike: cosines
        self.token.show(tokens, maps[:, row, col], scale, k)
        self.point(maps[k], scale)
        picture = mark_patch(self.overlay(i, maps[k], scale), row, col, self.grid)
        panel = (f"<p>patches that match <b>{html.escape(tokens[k])}</b>: the map; "
                 f"tokens that match patch ({row}, {col}), the white box:</p>")
        self.static = token_html(tokens, maps[:, row, col], self.cmap, scale)
        return picture, panel
