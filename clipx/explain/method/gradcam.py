"""Grad-CAM (Selvaraju et al., ICCV 2017) on a transformer block's input tokens.

Channel weights = the mean over tokens of the target's gradient with respect to a block's input
(the residual stream), map = relu(activations . weights) per token. The last block by default:
in CLIP only the class token's output of the last block reaches the embedding, so the patch
outputs of that block get no gradient; its input does. Image map over the patches (prefix tokens
such as a class token excluded), text map over the caption's tokens (mean over its real tokens,
padding excluded).
"""

from __future__ import annotations

import torch

from ..core import Inputs, Maps, Values, per_caption, per_image, register


def cam(activations: torch.Tensor, grads: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """activations, grads [batch, tokens, d]; keep [batch, tokens] which tokens count -> [batch, tokens]."""
    keep = keep.to(grads.dtype)
    weights = (grads * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    return ((activations * weights[:, None]).sum(-1)).clamp(min=0) * keep


@register("gradcam", Values("positive", "Grad-CAM"))
def gradcam(x: Inputs, layer: int = -1) -> Maps:
    v_name = f"vision.blocks.{x.layers('vision', layer, 'layer')[0]}.hook_resid_pre"
    t_name = f"text.blocks.{x.layers('text', layer, 'layer')[0]}.hook_resid_pre"
    out, cache = x.run([v_name, t_name], requires_grad=True)
    logits = out.logits_per_image
    v_act, t_act = cache[v_name], cache[t_name]
    patches = torch.ones(v_act.shape[:2], dtype=torch.bool, device=v_act.device)
    patches[:, :x.prefix] = False  # a class token is not a place in the image
    image = per_caption(logits, [v_act], lambda g: cam(v_act.detach(), g[0], patches)[:, x.prefix:])
    text = per_image(logits, [t_act], lambda g: cam(t_act.detach(), g[0], x.attention_mask.bool()))
    return Maps(logits.detach(), x.patch_grid(image), text)
