"""`InteractionView`: which words match which regions, exactly (second-order token x patch interactions,
`clipx.interactions`): a span of the caption's tokens -> its region map on the picture; a region of patches
-> its token strip."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from ipyevents import Event
from PIL import Image

from ..explain.interaction_figure import interaction_figure
from ..explain.interaction_maps import Interactions
from ..explain.legend import Scale, word_positions
from ..model.clip import CLIP
from .base import View
from .cache import PairInteractions
from .controls import TokenSpan
from .render import colour_bar_html, outline_cells, token_html

LABEL = "interaction"
SELECTING = ("<small>tokens: press one to pick it, shift-press another or drag along them for a span; picture: "
        "press a patch or drag a box for a region, shift adds to it</small>")


class InteractionView(View):
    """Second-order interactions of one image-caption pair at a time (Moeller et al., TMLR 2025): pick a span
    of the caption's tokens (press a token, shift-press or drag for more) and the picture shows the span's
    region map; pick a region on the picture (press a patch, drag a box; shift adds patches or boxes) and the
    token strip shows each token's interaction with that region (the region is outlined; at first it is the
    whole image). Red is positive, blue negative, on a scale centred at zero. Each pair is computed once,
    when first shown (`clipx.interactions` with text_layer, image_layer, n_steps); a selection only re-slices
    it. Special tokens are greyed in the strip, their values on hover; a SigLIP caption's padding, which its
    text tower reads too, is left out of the strip and its share written under the picture."""

    def __init__(self, model: CLIP, images: Any, texts: str | Sequence[str], *, text_layer: int = -1,
                 image_layer: int = -1, n_steps: int = 10, cmap: str | None = None, size: int = 448) -> None:
        super().__init__(model, images, texts, cmap, size)
        self.results = PairInteractions(model, self.pixel_values, self.progress, text_layer=text_layer,
                                        image_layer=image_layer, n_steps=n_steps)
        self.region = np.ones(self.grid, bool)  # the patches whose token strip is shown: all, until picked
        self.start: tuple[tuple[int, int], bool] | None = None  # the patch pressed and whether shift was held
        self.summary = ""
        self.token = TokenSpan()
        self.token.add_class("clipx-span")  # what tells this view's strip from TokenPatchView's on a page
        self.token.value = (-1, -1)  # none chosen yet: render starts on the caption's last word
        # presses and releases, not clicks: a drag is a press on one patch and a release on another; preventing
        # the default action keeps the browser from dragging the picture itself away
        self.presses = Event(source=self.picture, watched_events=["mousedown", "mouseup"],
                             prevent_default_action=True)
        self.presses.on_dom_event(self.pressed)
        self.build([[self.image_choice, self.opacity]],
                   watch=[self.image_choice, self.caption_choice, self.token, self.opacity],
                   side=[self.token, widgets.HTML(SELECTING), self.caption_choice])

    def pair(self) -> tuple[Interactions, list[str]]:
        """The shown pair's Interactions (1 x 1) and the caption's tokens the strip shows (its padding left out)."""
        text = self.caption_choice.value
        inter = self.results.get(self.image_choice.value, text)
        tok = self.model.tokenize([text])
        content = tok.attention_mask if tok.content_mask is None else tok.content_mask
        shown = int(content[0].nonzero().max()) + 1
        return inter, inter.tokens[0][:shown]

    def render(self) -> tuple[Image.Image, str]:
        i = self.image_choice.value
        inter, tokens = self.pair()
        first, last = self.token.value
        if not 0 <= first <= last < len(tokens) or tokens != self.token.tokens:
            # the last word: a caption's noun, where "a" (its first) says little
            first = last = (word_positions(tokens) or [len(tokens) - 1])[-1]
        region_map = inter.span(0, 0, slice(first, last + 1))                      # [grid_h, grid_w]
        strip = inter.box(0, 0, mask=torch.from_numpy(self.region))                 # [L]
        map_scale = Scale.fit(region_map, "signed", LABEL)
        words = word_positions(tokens) or list(range(len(tokens)))
        strip_scale = Scale.fit(strip[words], "signed", LABEL)  # the words': EOS may hold far more than any word
        self.token.show(tokens, strip, strip_scale, (first, last))
        self.point(region_map, map_scale)
        picture = outline_cells(self.overlay(i, region_map, map_scale), self.region)
        self.summary = summary(inter, tokens, (first, last), region_map, self.region, strip)
        panel = (f"<p>{html.escape(self.summary)}</p>"
                 + colour_bar_html(map_scale, f"the span's map: {LABEL}") + colour_bar_html(strip_scale, f"words: {LABEL}"))
        self.static = token_html(tokens, strip[:len(tokens)], self.cmap, strip_scale)
        return picture, panel

    def clicked(self, event: dict) -> None:
        """Nothing: here a click is a press and a release, which `pressed` reads (a drag ends in a click too)."""

    def pressed(self, event: dict) -> None:
        """A mousedown or mouseup on the picture: a press and a release on the same patch pick it, on two patches
        the box between them; with shift held at the press, the patch or box is added to the region (a
        shift-press on a picked patch alone takes it out, unless it is the region's last)."""
        cell = self.at(event, self.grid)
        if event.get("type") == "mousedown":
            self.start = None if cell is None else (cell, bool(event.get("shiftKey")))
            return
        if event.get("type") != "mouseup" or self.start is None or cell is None:
            return
        (r0, c0), add = self.start
        self.start = None
        box = np.zeros(self.grid, bool)
        box[min(r0, cell[0]):max(r0, cell[0]) + 1, min(c0, cell[1]):max(c0, cell[1]) + 1] = True
        if not add:
            region = box
        elif cell == (r0, c0) and self.region[cell] and not self.region.all():
            region = self.region & ~box
        else:
            region = self.region | box
        if region.any() and not np.array_equal(region, self.region):
            self.region = region
            self.refresh()

    def figure(self, **kwargs: Any):
        """The static figure of what the view shows (`interaction_figure`: the caption with the span marked, its
        map over the image, the region outlined and the words shaded by their interaction with it)."""
        inter, _ = self.pair()
        first, last = self.token.value
        return interaction_figure(inter, 0, 0, span=slice(first, last + 1), mask=torch.from_numpy(self.region),
                                  **kwargs)


def summary(inter: Interactions, tokens: list[str], span: tuple[int, int], region_map: torch.Tensor,
            region: np.ndarray, strip: torch.Tensor) -> str:
    """One line of what the view shows: the span's words and its map's sum, the region and its strip's sum, the
    pair's total and completeness gap (and the share of the positions the strip leaves out)."""
    first, last = span
    words = " ".join(tokens[first:last + 1])
    row, col = np.unravel_index(int(region_map.argmax()), region_map.shape)
    n = int(region.sum())
    where = "the whole image" if region.all() else f"{n} patch{'es' * (n > 1)}"
    hidden = float(strip[len(tokens):].sum())
    text = (f"span “{words}” (positions {first}–{last}): map sum {float(region_map.sum()):+.3g}, "
            f"highest at patch ({row}, {col}); region {where}: words' interaction sum "
            f"{float(strip[:len(tokens)].sum()):+.3g}")
    if len(strip) > len(tokens):
        text += f", padding {hidden:+.3g}"
    return text + (f"; pair total {float(inter.total[0, 0]):+.3g} vs the four similarities' "
                   f"{float(inter.expected[0, 0]):+.3g} (gap {float(inter.gap[0, 0]):+.2g})")
