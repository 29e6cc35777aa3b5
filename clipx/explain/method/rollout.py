"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Each layer's head-averaged attention plus the identity (for the residual connection), rows
renormalised to sum to one; the product of these matrices from `start_layer` to the last layer
says how much each input token flows into each output token. Image map: the class token's row
over the patches (for an attention-pooling head, the probe's weights over the tokens times the
matrix); text map: the pooled token's row over the tokens. No gradients: the same map for every
caption (image) and every image (text). `exclude_high_norm=ratio` drops the high-norm patches
(`clipx.mech.high_norm`) as keys in every layer before the rows are renormalised: no flow reaches them.
"""

from __future__ import annotations

import torch

from ..core import Inputs, Maps, Values, drop_keys, pattern_names, pooled_rows, register


def rollout_matrix(patterns: list[torch.Tensor]) -> torch.Tensor:
    """[batch, heads, n, n] per layer, first layer first -> [batch, n, n]."""
    result = None
    for pattern in patterns:
        a = pattern.mean(1) + torch.eye(pattern.shape[-1], dtype=pattern.dtype, device=pattern.device)
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


@register("rollout", Values("positive", "attention rollout"), caption_blind=True)
def rollout(x: Inputs, start_layer: int = 0, exclude_high_norm: float | None = None) -> Maps:
    v_names = pattern_names("vision", x.layers("vision", start_layer))
    t_names = pattern_names("text", x.layers("text", start_layer))
    with torch.no_grad():
        out, cache = x.run(v_names + t_names + x.readout_names + x.high_norm_names(exclude_high_norm))
    keep = x.keep_keys(cache, exclude_high_norm)
    image, text = pooled_rows(x, rollout_matrix([drop_keys(cache[n], keep) for n in v_names]),
                              rollout_matrix([cache[n] for n in t_names]), cache, keep)
    return Maps(out.logits_per_image, image, text)
