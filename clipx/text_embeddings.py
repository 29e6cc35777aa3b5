"""Text embeddings in bounded batches, the model's own score between embeddings, and explanations of
an image against a text embedding rather than a caption (a zero-shot class, a retrieval query)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .explain import Explanation, explain
from .model import CLIP


@torch.no_grad()
def embed_texts(model: CLIP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """[n_texts, dim] unit-length text embeddings, tokenized and encoded `batch_size` captions at a time
    (1,000 classes x 80 templates never sits in one padded batch)."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tok = model.tokenize(list(texts[start:start + batch_size]))
        chunks.append(F.normalize(model.encode_text(tok.input_ids, tok.attention_mask).float(), dim=-1))
    return torch.cat(chunks)


@torch.no_grad()
def embed_images(model: CLIP, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n_images, dim] unit-length image embeddings, float32."""
    return F.normalize(model.encode_image(pixel_values).float(), dim=-1)


def scores(model: CLIP, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """The model's logits between unit embeddings: exp(logit_scale) * cosine, plus logit_bias where the
    model has one (SigLIP) -- exactly `logits_per_image` of a forward pass."""
    logits = image_embeds @ text_embeds.T * model.logit_scale.detach().float().exp()
    return logits if model.logit_bias is None else logits + model.logit_bias.detach().float()


def explain_embedding(model: CLIP, images: Any, embedding: torch.Tensor, label: str, method: str = "relevance",
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
