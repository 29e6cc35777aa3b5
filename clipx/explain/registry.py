"""The method registry and `explain`, the one entry point every method goes through."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..errors import check_has_values
from ..model.clip import CLIP
from ..model.inputs import prepare_images
from ..preprocess.text import check_texts
from .core import CAPTION_BLIND, METHODS, Inputs, Method, defaults
from .explanation import Explanation
from .neutral import subtract_neutral, with_neutral


def methods() -> list[str]:
    """The names `clipx.explain(..., method=...)` accepts."""
    return sorted(METHODS)


def method_options(name: str | type, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's options and their defaults; with `given` options, every option a call with them runs
    with (a TypeError names one the method does not take, and lists those it does)."""
    name, _, allowed = _resolve(name)
    return _used(name, allowed, given or {})


def _used(name: str, allowed: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"method {name!r} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options are: {', '.join(f'{k}={v!r}' for k, v in allowed.items()) or 'none'}")
    return {**allowed, **given}


def default_method(model: CLIP) -> str:
    """The method `explain` runs when none is named, chosen by how the model reads its image out, since the
    best one depends on it. A class token (CLIP): `relevance` through all layers. An attention-pooling
    head (SigLIP): `integrated_gradients`, since relevance through the head's probe localises poorly.
    Measured on the demo models (benchmarks/shapes_eval.py, 200 fresh two-object scenes, pointing game):
    relevance through all layers 0.930 on CLIP's against 0.715 through the last layer alone, and
    integrated gradients 0.960 on SigLIP's against 0.620 for relevance, whatever its start layer.
    Large ViTs (B/16 and up) may prefer `start_layer=-1` (see `relevance`)."""
    return "relevance" if model._tower("vision").config.pooling == "class" else "integrated_gradients"


def _resolve(method: Any) -> tuple[str, Method, dict[str, Any]]:
    """(name, function, options and defaults) of a registered method's name or a Captum attribution class."""
    if inspect.isclass(method):
        from .method.captum_adapter import captum_method  # imported here: Captum costs `import clipx` half a second

        return captum_method(method)
    if not isinstance(method, str):
        raise TypeError(f"method must be a method's name (a str) or a Captum attribution class, got "
                        f"{type(method).__name__}; clipx.methods() has: {', '.join(methods())}")
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; clipx.methods() has: {', '.join(methods())}") from None
    return method, fn, defaults(method)


def explain(model: CLIP, images: Any, texts: Any, method: str | type | None = None,
            neutral: str | None = None, **options: Any) -> Explanation:
    """Explain every image against every caption with one method: a registered method's name, a
    Captum attribution class (`captum.attr.Saliency`; its `attribute` options, see `captum_adapter`),
    or None for the model's default (`default_method`: relevance for CLIP, integrated gradients for
    SigLIP). The Explanation records the method and every option it ran with, defaults included.

    images: PIL images, paths, arrays, or preprocessed pixel_values [B, 3, H, W] (another size
    than the model's runs with interpolated positions, for finer grids). texts: captions, or token ids
    the caller made (an `Encoding`, or `{"input_ids": [T, L], "attention_mask": [T, L]}`; the text maps
    then keep those positions, and a model without a tokenizer explains them too).
    neutral: a caption whose image map is subtracted from every caption's (`neutral.py`: what the
    maps of all captions share, high-norm background patches among it, cancels), for the methods
    whose map depends on the caption.
    Works whatever attention backend the model uses (the layers a method reads run eagerly for
    this call), inside `torch.no_grad()`, and leaves no hooks or gradients behind.
    """
    method, fn, allowed = _resolve(default_method(model) if method is None else method)
    used = _used(method, allowed, options)
    token_inputs = _token_inputs(model, texts)
    if neutral is not None:  # the captions must hold words; the neutral one may be empty (what an empty caption shares)
        texts = with_neutral(method, texts, neutral, token_inputs is not None, CAPTION_BLIND)
    with torch.inference_mode(False):  # inputs made here are normal tensors autograd can save
        inputs = _prepare(model, images, texts, token_inputs, neutral)
        maps = fn(inputs, **options)
    if neutral is not None:
        inputs, maps = subtract_neutral(inputs, maps)
    tok, content = model.tokenizer, inputs.content_mask
    tokens = (tok.tokens(inputs.input_ids, content) if tok is not None
              else [[str(i) for i in row[m.bool()].tolist()] for row, m in zip(inputs.input_ids, content)])
    text = maps.text
    if text is not None and token_inputs is None:  # token ids the caller made keep the caller's positions
        text = _caption_first(text, content)
    return Explanation(
        image=maps.image, text=text, scores=maps.scores.detach(), tokens=tokens, texts=inputs.texts,
        method=method, options={**used, **({"neutral": neutral} if neutral is not None else {})},
        images=display_images(model, inputs.pixel_values),
        token_maps=maps.token_maps, crop_boxes=inputs.crop_boxes, image_sizes=inputs.image_sizes)


def prepare_inputs(model: CLIP, images: Any, texts: Any) -> Inputs:
    """The Inputs `explain` gives a method, for the functions that are not methods (`interactions`): images
    and captions or token ids, checked as `explain` checks them."""
    with torch.inference_mode(False):
        return _prepare(model, images, texts, _token_inputs(model, texts), None)


def _token_inputs(model: CLIP, texts: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(input_ids, attention_mask, content mask) where `texts` holds token ids the caller made (an
    `Encoding`, or a mapping with input_ids and optionally attention_mask), checked against the model; None
    for captions."""
    if isinstance(texts, str) or not hasattr(texts, "keys") or "input_ids" not in texts.keys():
        return None  # captions (check_texts refuses a mapping without input_ids)
    model._tower("text")
    ids = texts["input_ids"]
    mask = texts["attention_mask"] if "attention_mask" in texts.keys() else None
    check_has_values("input_ids", ids)
    check_has_values("attention_mask", mask)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor [n_texts, length], got {ids!r:.80}")
    ids = ids[None] if ids.ndim == 1 else ids
    vocab, length = model.text.token_embedding.num_embeddings, model.text.config.max_position_embeddings
    if ids.ndim != 2 or 0 in ids.shape:
        raise ValueError(f"input_ids must be [n_texts, length], got shape {tuple(ids.shape)}")
    if ids.shape[1] > length or int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"input_ids must be ids in [0, {vocab}) at most {length} long (this text tower's "
                         f"vocabulary and positions), got shape {tuple(ids.shape)}, ids {int(ids.min())}..{int(ids.max())}")
    mask = torch.ones_like(ids) if mask is None else (mask[None] if mask.ndim == 1 else mask)
    if mask.shape != ids.shape or not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"attention_mask must be 0s and 1s shaped like input_ids {tuple(ids.shape)}, "
                         f"got shape {tuple(mask.shape)}")
    empty = (mask == 0).all(dim=-1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} are all zeros: those captions would have no tokens")
    content = getattr(texts, "content_mask", None)
    device = model.text.token_embedding.weight.device
    ids, mask = ids.long().to(device), mask.long().to(device)
    return ids, mask, mask if content is None else content.to(device)


def _prepare(model: CLIP, images: Any, texts: Any, token_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
             neutral: str | None) -> Inputs:
    model._tower("vision"), model._tower("text")  # both towers, or a clear error naming the missing one
    name, weight = next(model.named_parameters())
    check_has_values(f"the model's {name}", weight)  # model.to("meta"): shapes without values
    if token_inputs is None:
        texts = check_texts(texts, words=neutral is None)
        tok = model.tokenize(texts)
        input_ids, attention_mask = tok.input_ids, tok.attention_mask
        content = tok.attention_mask if tok.content_mask is None else tok.content_mask
    else:
        input_ids, attention_mask, content = token_inputs
        tokenizer = model.tokenizer
        texts = [tokenizer.decode(row[m.bool()]) if tokenizer is not None else f"input_ids[{j}]"
                 for j, (row, m) in enumerate(zip(input_ids, content))]
    pixel_values, sizes = prepare_images(model, images)
    processor = model.processor
    crop_boxes = None
    if sizes is not None and all(s is not None for s in sizes) and processor is not None:
        crop_boxes = [processor.crop_box(*s) for s in sizes]
    size = model.vision.config.image_size
    return Inputs(model, pixel_values, input_ids, attention_mask, texts, content,
                  crop_boxes, sizes if crop_boxes else None,
                  interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (size, size))


def _caption_first(text: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """[B, T, L] maps over input positions -> over each caption's own tokens first, then its padding, so
    that text[i, j, k] belongs to tokens[j][k] whichever side the tokenizer padded."""
    order = torch.argsort(content.to(torch.int8), dim=1, descending=True, stable=True)  # [T, L]
    return text.gather(2, order[None].expand(text.shape[0], -1, -1))


def display_images(model: CLIP, pixel_values: torch.Tensor) -> torch.Tensor | None:
    """The images the model saw, as uint8 [B, H, W, 3] to draw maps over; None for a model without a processor."""
    if model.processor is None:
        return None
    return torch.stack([torch.from_numpy(np.array(im)) for im in model.processor.to_pil(pixel_values.detach().float().cpu())])
