"""What every caller of the model does to its inputs and outputs, in one copy: images (PIL, paths, arrays
or pixel_values) to pixel_values, captions to unit text embeddings in bounded batches, pixel_values of
any size to image embeddings, and embeddings to the model's own scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .clip import CLIP, _describe, _normalize
from ..preprocess.image import check_pixel_values, image_list, image_size
from ..preprocess.naflex import PatchedImages
from ..preprocess.text import check_texts


def prepare_images(model: CLIP, images: Any, as_images: bool = True
                   ) -> tuple[torch.Tensor | PatchedImages, list[tuple[int, int] | None] | None]:
    """Images (PIL, paths, arrays) or preprocessed pixel_values -> (pixel_values on the model's device, each
    image's (width, height) as given, or None for a tensor).

    A NaFlex processor cuts each image into patches on a grid of its own aspect ratio: `as_images` (for
    what perturbs pixels or maps patches) gives the batch as images [B, 3, H, W], which it is where
    every image has one grid (and a ValueError saying so where not); as_images=False keeps the patches
    (`PatchedImages`), which only `model.encode_image` and `model(...)` take."""
    if isinstance(images, torch.Tensor):
        images = check_pixel_values(images, "images")  # float [B, 3, H, W], not uint8 pixels cast silently
        return images.to(*model._device_dtype()).clone(), None  # a normal copy of what may be an inference tensor
    images = image_list(images)
    pixel_values = model.preprocess(images)
    if as_images and isinstance(pixel_values, PatchedImages):
        pixel_values = pixel_values.images(model._tower("vision").config.patch_size)
    return pixel_values, [_size(im, i) for i, im in enumerate(images)]


def _size(image: Any, i: int) -> tuple[int, int] | None:
    """(width, height) of an image as given (a file as the processor opens it), for placing maps back onto it."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (str, os.PathLike)):
        return image_size(image, f"images[{i}]")
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return image.shape[1], image.shape[0]
    return None


def encode_images(model: CLIP, pixel_values: torch.Tensor) -> torch.Tensor:
    """`model.encode_image`, with interpolated positions for pixel_values of another size than the model's."""
    size = model._tower("vision").config.image_size
    return model.encode_image(pixel_values, interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (size, size))


@torch.no_grad()
def embed_images(model: CLIP, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n_images, dim] unit-length image embeddings, float32."""
    return F.normalize(model.encode_image(pixel_values).float(), dim=-1)


@torch.no_grad()
def embed_texts(model: CLIP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """[n_texts, dim] unit-length text embeddings, tokenized and encoded `batch_size` captions at a time
    (1,000 classes x 80 templates never sits in one padded batch)."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tok = model.tokenize(list(texts[start:start + batch_size]))
        chunks.append(F.normalize(model.encode_text(tok.input_ids, tok.attention_mask).float(), dim=-1))
    return torch.cat(chunks)


def text_embeds(model: CLIP, texts: str | list[str] | torch.Tensor) -> torch.Tensor:
    """Unit text embeddings [n_texts, dim]: of captions (encoded in batches), or of embeddings given as a
    float tensor [n_texts, dim]."""
    if isinstance(texts, torch.Tensor):
        if not texts.is_floating_point() or texts.ndim != 2 or 0 in texts.shape:
            raise ValueError(f"text embeddings must be a float tensor [n_texts, dim], got {_describe(texts)}; "
                             "or pass the captions")
        return _normalize(texts.detach().float())
    return embed_texts(model, check_texts(texts))


def scores(model: CLIP, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """The model's logits between unit embeddings, float32 and detached: `model.logits`, which is exactly
    `logits_per_image` of a forward pass."""
    with torch.no_grad():
        return model.logits(image_embeds.float(), text_embeds.float())
