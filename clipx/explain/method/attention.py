"""Raw attention: what the pooled token looks at in one layer.

The class token's attention row over the patches (image) and the pooled token's row over the
caption's tokens (text), averaged over heads or for one head. Where an attention-pooling head
reads the image (SigLIP), the image map is the layer's rows weighted by the probe's attention over
the tokens: where the tokens the probe reads were looking. It reads no gradient, so it is the
same for every caption (image map) and every image (text map). `exclude_high_norm=ratio` drops the
high-norm patches (`clipx.mech.high_norm`) from the rows.
"""

from __future__ import annotations

import torch

from ...errors import check_int
from ..core import Inputs, Maps, Values, drop_keys, pooled_rows, register


@register("attention", Values("positive", "attention weight"), caption_blind=True)
def attention(x: Inputs, layer: int = -1, head: int | None = None, exclude_high_norm: float | None = None) -> Maps:
    v_layer, t_layer = x.layers("vision", layer, "layer")[0], x.layers("text", layer, "layer")[0]
    if head is not None:  # checked before the model runs
        head = check_int("head", head)
        n_heads = x.model.vision.config.num_attention_heads, x.model.text.config.num_attention_heads
        if not all(-n <= head < n for n in n_heads):
            raise ValueError(f"head {head} is out of range: the towers have {n_heads[0]} and {n_heads[1]} heads")
    names = [f"vision.blocks.{v_layer}.attn.hook_pattern", f"text.blocks.{t_layer}.attn.hook_pattern"]
    with torch.no_grad():
        out, cache = x.run(names + x.readout_names + x.high_norm_names(exclude_high_norm))
    keep = x.keep_keys(cache, exclude_high_norm)
    vision, text = drop_keys(cache[names[0]], keep), cache[names[1]]  # [B or T, heads, L, L]
    if head is not None:
        vision, text = vision[:, head], text[:, head]
    else:
        vision, text = vision.mean(1), text.mean(1)
    image, text_map = pooled_rows(x, vision, text, cache, keep)
    return Maps(out.logits_per_image, image, text_map)
