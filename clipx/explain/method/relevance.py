"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021), as in
the CLIP notebook of hila-chefer/Transformer-MM-Explainability.

Target: logits_per_image[i, j]. From the start layer on, A_bar = mean over heads of
relu(dA * A), where dA is the target's gradient with respect to the attention pattern A;
R starts at the identity and R += A_bar @ R, layer by layer. Image map: R[class token, patches];
where an attention-pooling head reads the image (SigLIP), the head's own A_bar (the probe's
gradient-weighted attention over the tokens) times R, so relevance flows through the probe.
Text map: R[pooled token, tokens]. `exclude_high_norm=ratio` drops the high-norm patches
(`clipx.mech.high_norm`) as keys of every A_bar (and of the probe's): no relevance flows to them.

start_layer 0 (the default) reads every layer, as the paper does; -1 (the notebook's default) the last
alone. On the CLIP demo all layers point right 0.930 of the time against 0.715 for the last
(benchmarks/shapes_eval.py, 200 two-object scenes). Which is better depends on the model: Chefer found
that on CLIP ViT-B/32 the early layers do little harm, while on B/16 they highlight background
artifacts (hila-chefer/Transformer-MM-Explainability issues 8 and 10), where start_layer=-1 or
`exclude_high_norm` help. The text side keeps the notebook's -1 (start_layer_text), which nothing here
has scored.
"""

from __future__ import annotations

import torch

from ..core import (Inputs, Maps, Values, drop_keys, image_rows, pattern_names, per_caption, per_image, register,
                    text_rows)


def weighted(pattern: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A_bar: the mean over heads of relu(dA * A), [batch, query, key]."""
    return (grad * pattern).clamp(min=0).mean(1)


def relevance_matrix(patterns: list[torch.Tensor], grads: list[torch.Tensor],
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, heads, n, n] patterns and their gradients, first layer first -> R [batch, n, n]; `keep`
    [batch, n]: the keys kept (see `drop_keys`)."""
    n = patterns[0].shape[-1]
    r = torch.eye(n, dtype=patterns[0].dtype, device=patterns[0].device).expand(patterns[0].shape[0], n, n)
    for a, g in zip(patterns, grads):
        r = r + drop_keys(weighted(a, g), keep) @ r
    return r


@register("relevance", Values("positive", "relevance"))
def relevance(x: Inputs, start_layer: int = 0, start_layer_text: int = -1,
              exclude_high_norm: float | None = None) -> Maps:
    v_names = pattern_names("vision", x.layers("vision", start_layer))
    t_names = pattern_names("text", x.layers("text", start_layer_text, "start_layer_text"))
    out, cache = x.run(v_names + x.readout_names + t_names + x.high_norm_names(exclude_high_norm), requires_grad=True)
    keep = x.keep_keys(cache, exclude_high_norm)
    logits = out.logits_per_image
    v_patterns = [cache[n] for n in v_names + x.readout_names]  # the pooling head's last, if any
    t_patterns = [cache[n] for n in t_names]
    n_layers = len(v_names)

    def image_map(grads: list[torch.Tensor]) -> torch.Tensor:
        r = relevance_matrix(v_patterns[:n_layers], grads[:n_layers], keep)
        readout = drop_keys(weighted(v_patterns[-1], grads[-1])[:, 0], keep) if x.readout_names else None
        return image_rows(x, r, readout)

    positions = x.pooled_positions
    image = per_caption(logits, v_patterns, image_map)
    text = per_image(logits, t_patterns, lambda g: text_rows(relevance_matrix(t_patterns, g), positions))
    return Maps(logits.detach(), x.patch_grid(image), text)
