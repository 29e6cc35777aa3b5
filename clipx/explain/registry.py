"""The method registry and `explain`, the one entry point every method goes through."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..model import CLIP
from ..processing import check_pixel_values, image_size
from .core import Inputs
from .explanation import Explanation


@dataclass
class Maps:
    """What a method returns; `explain` adds the rest of the Explanation."""

    scores: torch.Tensor
    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    token_maps: torch.Tensor | None = None


Method = Callable[..., Maps]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    def add(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return add


def methods() -> list[str]:
    """The names `clipx.explain(..., method=...)` accepts."""
    return sorted(METHODS)


def method_options(name: str) -> dict[str, Any]:
    """A method's options and their defaults."""
    return _resolve(name)[2]


def _resolve(method: Any) -> tuple[str, Method, dict[str, Any]]:
    """(name, function, options and defaults) of a registered method's name or a Captum attribution class."""
    if inspect.isclass(method):
        from .captum_adapter import captum_method  # imported here: Captum costs `import clipx` half a second

        return captum_method(method)
    if not isinstance(method, str):
        raise TypeError(f"method must be a method's name (a str) or a Captum attribution class, got "
                        f"{type(method).__name__}; clipx.methods() has: {', '.join(methods())}")
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; clipx.methods() has: {', '.join(methods())}") from None
    return method, fn, {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}


def explain(model: CLIP, images: Any, texts: str | list[str], method: str | type = "relevance",
            **options: Any) -> Explanation:
    """Explain every image against every caption with one method: a registered method's name, or a
    Captum attribution class (`captum.attr.Saliency`; its `attribute` options, see `captum_adapter`).

    images: PIL images, paths, arrays, or preprocessed pixel_values [B, 3, H, W] (another size
    than the model's runs with interpolated positions, for finer grids). texts: captions.
    Works whatever attention backend the model uses (the layers a method reads run eagerly for
    this call), inside `torch.no_grad()`, and leaves no hooks or gradients behind.
    """
    method, fn, allowed = _resolve(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"method {method!r} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options are: {', '.join(f'{k}={v!r}' for k, v in allowed.items()) or 'none'}")
    with torch.inference_mode(False):  # inputs made here are normal tensors autograd can save
        inputs = _prepare(model, images, texts)
        maps = fn(inputs, **options)
    tok, content = model.tokenizer, inputs.content_mask
    tokens = (tok.tokens(inputs.input_ids, content) if tok is not None
              else [[str(i) for i in row[m.bool()].tolist()] for row, m in zip(inputs.input_ids, content)])
    return Explanation(
        image=maps.image, text=None if maps.text is None else _caption_first(maps.text, content), scores=maps.scores.detach(), tokens=tokens, texts=inputs.texts,
        method=method, options={**allowed, **options}, images=_display(model, inputs.pixel_values),
        token_maps=maps.token_maps, crop_boxes=inputs.crop_boxes, image_sizes=inputs.image_sizes)


def _prepare(model: CLIP, images: Any, texts: str | list[str]) -> Inputs:
    model._tower("vision"), model._tower("text")  # both towers, or a clear error naming the missing one
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts to explain: got an empty list")
    pixel_values, sizes = prepare_images(model, images)
    processor = model.processor
    crop_boxes = None
    if sizes is not None and all(s is not None for s in sizes) and processor is not None:
        crop_boxes = [processor.crop_box(*s) for s in sizes]
    tok = model.tokenize(texts)
    size = model.vision.config.image_size
    content = tok.attention_mask if tok.content_mask is None else tok.content_mask
    return Inputs(model, pixel_values, tok.input_ids, tok.attention_mask, texts, content,
                  crop_boxes, sizes if crop_boxes else None,
                  interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (size, size))


def prepare_images(model: CLIP, images: Any) -> tuple[torch.Tensor, list[tuple[int, int] | None] | None]:
    """Images (PIL, paths, arrays) or preprocessed pixel_values -> (pixel_values on the model's device, each
    image's (width, height) as given, or None for a tensor)."""
    if isinstance(images, torch.Tensor):
        images = check_pixel_values(images, "images")  # float [B, 3, H, W], not uint8 pixels cast silently
        return images.to(*model._device_dtype()).clone(), None  # a normal copy of what may be an inference tensor
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ValueError("no images given: got an empty list")
    sizes = [_size(im, i) for i, im in enumerate(images)]
    return model.preprocess(images), sizes


def _caption_first(text: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """[B, T, L] maps over input positions -> over each caption's own tokens first, then its padding, so
    that text[i, j, k] belongs to tokens[j][k] whichever side the tokenizer padded."""
    order = torch.argsort(content.to(torch.int8), dim=1, descending=True, stable=True)  # [T, L]
    return text.gather(2, order[None].expand(text.shape[0], -1, -1))


def _display(model: CLIP, pixel_values: torch.Tensor) -> torch.Tensor | None:
    if model.processor is None:
        return None
    return torch.stack([torch.from_numpy(np.array(im)) for im in model.processor.to_pil(pixel_values.detach().float().cpu())])


def _size(image: Any, i: int) -> tuple[int, int] | None:
    """(width, height) of an image as given (a file as the processor opens it), for placing maps back onto it."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, (str, os.PathLike)):
        return image_size(image, f"images[{i}]")
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return image.shape[1], image.shape[0]
    return None
