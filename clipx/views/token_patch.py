"""`TokenPatchView`: which patches match a caption's token, and which tokens match a patch."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..explain.legend import Scale, map_values
from ..explain.method.similarity import VARIANTS, check_variant
from ..model.clip import CLIP
from .base import View
from .cache import Explanations
from .render import mark_patch, token_html


class TokenPatchView(View):
    """Token-to-patch similarity (the "similarity" method's token_maps): pick a caption token to
    see the patches that match it; move the patch sliders to see the tokens that match that patch.
    `variant` picks the patch features: "maskclip" (default; they localise) or the plain last-layer "tokens"."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], variant: str = "maskclip",
                 cmap: str | None = None, size: int = 224) -> None:
        check_variant(variant)  # before the toggle below would refuse it less clearly
        super().__init__(model, images, texts, cmap, size)
        self.results = Explanations(model, self.pixel_values, self.texts, self.progress)
        self.token = widgets.Dropdown(description="token")
        self.variant = widgets.ToggleButtons(options=VARIANTS, value=variant, description="patches")
        self.row, self.col = self.patch_sliders()
        controls = [self.image_choice, self.caption_choice, self.token, self.row, self.col, self.variant, self.opacity]
        self.build([controls[:3], controls[3:5], controls[5:]], watch=controls)

    def render(self) -> tuple[Image.Image, str]:
        i, row, col = self.image_choice.value, self.row.value, self.col.value
        exp, j = self.results.get("similarity", self.caption_choice.value, variant=self.variant.value)
        tokens = exp.tokens[j]
        self.set_options(self.token, [(f"{k}: {t}", k) for k, t in enumerate(tokens)], default=min(1, len(tokens) - 1))
        k = self.token.value
        maps = exp.token_maps[i, j, :len(tokens)]  # [tokens, grid_h, grid_w]
        scale = Scale.of(maps, map_values("similarity"))  # the maps and the tokens' row alike: cosines
        picture = mark_patch(self.overlay(i, maps[k], scale), row, col, self.grid)
        panel = (f"<p>patches that match <b>{html.escape(tokens[k])}</b>: the map</p>"
                 f"<p>tokens that match patch ({row}, {col}), the white box:</p>"
                 + token_html(tokens, maps[:, row, col], self.cmap, scale))
        return picture, panel
