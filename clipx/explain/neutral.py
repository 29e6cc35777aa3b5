"""A neutral caption's map subtracted from every caption's: `explain(..., neutral="a photo")`.

Part of any caption's map is not about the caption: patches every caption's logit leans on (high-norm
background tokens in large ViTs, the image's most salient object). The map of a caption that names
nothing in particular holds that part; subtracting it leaves what is specific to each caption. The
neutral caption is explained in the same batched call as the captions, one caption more; the difference
is signed (negative where the neutral caption leans on a patch more). Image maps only: text maps, scores and token maps stay the
captions' own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .core import Inputs
from ..preprocess.text import check_texts


def with_neutral(method: str, texts: Any, neutral: Any, token_inputs: bool, caption_blind: set[str]) -> list[str]:
    """The captions with the neutral one last, after checking that subtracting it means something."""
    if not isinstance(neutral, str):
        raise TypeError(f"neutral must be a caption (a str), got {type(neutral).__name__}")
    if method in caption_blind:
        raise ValueError(f"method {method!r} gives every caption the same image map, so subtracting a neutral "
                         f"caption's map would leave zeros; neutral= is for methods whose maps depend on the caption "
                         f"(not {', '.join(sorted(caption_blind))}); for {method!r} see exclude_high_norm=")
    if token_inputs:
        raise ValueError("neutral= takes captions as strings: with token ids, explain the neutral caption's ids "
                         "as one more row and subtract its map")
    return check_texts(texts) + [neutral]


def subtract_neutral(inputs: Inputs, maps: Any) -> tuple[Inputs, Any]:
    """Inputs and maps of captions + [neutral] -> those of the captions, each image map minus the neutral's.

    A neutral caption longer than every caption padded them further: the positions that are padding in
    every caption (attention_mask 0; a tokenizer that pads to its context length makes the padding input,
    so none) are dropped from the inputs and the text-side maps, which then have the captions' own
    positions, as the captions tokenized alone."""
    if maps.image is None:
        raise ValueError("this method gives no image map to subtract a neutral caption's from")
    captions = slice(0, -1)
    own = inputs.attention_mask[captions].bool().any(0)  # [L]
    inputs = dataclasses.replace(inputs, input_ids=inputs.input_ids[captions][:, own],
                                 attention_mask=inputs.attention_mask[captions][:, own],
                                 content_mask=inputs.content_mask[captions][:, own], texts=inputs.texts[captions])
    maps = dataclasses.replace(
        maps, scores=maps.scores[:, captions], image=maps.image[:, captions] - maps.image[:, -1:],
        text=None if maps.text is None else maps.text[:, captions][..., own],
        token_maps=None if maps.token_maps is None else maps.token_maps[:, captions][:, :, own])
    return inputs, maps
