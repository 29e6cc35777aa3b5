"""Explanations of images against a text embedding rather than a caption: a zero-shot class, a
retrieval query, an ensemble of prompts."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from ..model.clip import CLIP
from .explanation import Explanation
from .registry import explain


def explain_embedding(model: CLIP, images: Any, embedding: torch.Tensor, label: str, method: str | None = None,
                      **options: Any) -> Explanation:
    """Explain each image against one text embedding [dim]: `clipx.explain` with the text tower's projected
    output replaced by `embedding` (a forward hook on `text.hook_projected`), so the maps and
    `scores` are those of the embedding itself -- an ensemble of prompts has no single caption.

    `label` is what the Explanation names as its caption. Caption-side maps (`text`, `token_maps`) would
    describe the tokens of `label`, which do not make this embedding, so they are left out (None)."""
    target = F.normalize(embedding.detach().float().reshape(1, -1), dim=-1)

    def replace(projected: torch.Tensor, hook: Any) -> torch.Tensor:
        # `projected * 0` keeps the text tower in the graph (methods that differentiate the caption side
        # need a graph there), while its value and its gradient on the logit are nothing
        return projected * 0 + target.to(projected)

    with model.hooks(fwd_hooks=[("text.hook_projected", replace)]):
        exp = explain(model, images, [label], method=method, **options)
    return dataclasses.replace(exp, text=None, token_maps=None)
