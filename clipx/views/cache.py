"""What the explorers compute once and then only re-render: explanations per method, every
attention pattern of both towers, and each image-caption pair's token x patch interactions."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..explain import Explanation, explain
from ..explain.interaction_maps import Interactions
from ..explain.interactions import interactions
from ..model.clip import CLIP

Progress = Callable[[str], AbstractContextManager]


class Explanations:
    """Each method's explanations of all images x all captions, computed the first time the
    method is asked for, in one batched `explain` call; captions added later are computed
    together, once per method, when next asked for."""

    def __init__(self, model: CLIP, pixel_values: torch.Tensor, texts: list[str], progress: Progress) -> None:
        self.model, self.pixel_values, self.progress = model, pixel_values, progress
        self.texts = texts  # the view's own list: captions it adds are seen here
        self._done: dict[str, dict[str, tuple[Explanation, int]]] = {}

    def get(self, method: str, text: str, **options: Any) -> tuple[Explanation, int]:
        """The Explanation holding `text` (by `method` with `options`), and the caption's column in it."""
        # keyed by the options' repr: typed options may be lists, which a dict key cannot hold
        done = self._done.setdefault(repr((method, sorted(options.items()))), {})
        missing = [t for t in self.texts if t not in done]
        if missing:
            with self.progress(f"computing {method} for {len(self.pixel_values)} images x {len(missing)} captions…"):
                exp = explain(self.model, self.pixel_values, missing, method=method, **options)
            done.update({t: (exp, j) for j, t in enumerate(missing)})
        return done[text]


class Patterns:
    """Every layer's attention pattern in both towers, from one eager forward of all images and captions."""

    def __init__(self, model: CLIP, pixel_values: torch.Tensor, texts: list[str], progress: Progress) -> None:
        tok = model.tokenize(texts)
        with progress("recording attention…"), model.attention("eager"), torch.no_grad():  # only eager exposes patterns
            _, cache = model.run_with_cache(pixel_values=pixel_values, input_ids=tok.input_ids,
                                            attention_mask=tok.attention_mask, names_filter="*.attn.hook_pattern")
        self.cache = cache
        # each caption's own tokens: SigLIP attends to its padding too, which would fill most of the matrix
        content = tok.attention_mask if tok.content_mask is None else tok.content_mask
        self.positions = [row.nonzero().flatten() for row in content.bool()]
        self.tokens = model.tokenizer.tokens(tok.input_ids, content)

    def get(self, tower: str, layer: int | str, index: int, head: int | None) -> torch.Tensor:
        """[L, L] attention of image or caption `index` in one layer (layer "head": the vision pooling
        head's, [1, L]): one head, or the mean of all (head=None)."""
        where = "head" if layer == "head" else f"blocks.{layer}"
        pattern = self.cache[f"{tower}.{where}.attn.hook_pattern"][index]
        if tower == "text":
            keep = self.positions[index]
            pattern = pattern[:, keep][:, :, keep]
        return pattern.mean(0) if head is None else pattern[head]


class PairInteractions:
    """Each (image, caption) pair's `interactions`, computed the first time the pair is asked for: one pair
    costs one image's and one caption's integrals, which every span and region of it then only re-slices."""

    def __init__(self, model: CLIP, pixel_values: torch.Tensor, progress: Progress, **options: Any) -> None:
        self.model, self.pixel_values, self.progress, self.options = model, pixel_values, progress, options
        self._done: dict[tuple[int, str], Interactions] = {}

    def get(self, image: int, text: str) -> Interactions:
        """The Interactions of image `image` with caption `text`: 1 image x 1 caption."""
        if (image, text) not in self._done:
            with self.progress(f"computing the interactions of image {image} with {text!r}…"):
                self._done[image, text] = interactions(self.model, self.pixel_values[image:image + 1], [text],
                                                       **self.options)
        return self._done[image, text]
