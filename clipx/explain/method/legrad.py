"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", 2024), as in WalBouss/LeGrad's CLIP wrapper.

For each layer l from `start_layer` on: layer l's output tokens read out as an image embedding
(`layer_embedding`), its cosine with the caption embedding s_l; the ReLU of ds_l / dA_l (A_l that
layer's attention pattern), averaged over heads and query rows, prefix keys (a class token)
dropped. The maps of the layers are summed, then min-max normalised per pair. Image only. `exclude_high_norm=ratio` drops the high-norm patches
(`clipx.mech.high_norm`) as keys: they get 0 before the normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...model.towers import VisionTower
from ..core import Inputs, Maps, Values, drop_keys, per_caption, register


def layer_embedding(vision: VisionTower, tokens: torch.Tensor) -> torch.Tensor:
    """An intermediate layer's tokens [B, n, d] as an image embedding [B, D]: through the model's
    attention-pooling head where it has one; for a class-token model, the mean of the tokens through
    ln_post (LeGrad's choice: an intermediate class token has not gathered the image yet)."""
    return vision.readout(tokens, class_token=tokens.mean(1))


@register("legrad", Values("positive", "LeGrad (0..1 per map)"))
def legrad(x: Inputs, start_layer: int = -2, exclude_high_norm: float | None = None) -> Maps:
    layers = x.layers("vision", start_layer)
    names = [f"vision.blocks.{i}.{h}" for i in layers for h in ("attn.hook_pattern", "hook_resid_post")]
    out, cache = x.run(list(dict.fromkeys(names + x.high_norm_names(exclude_high_norm))), requires_grad=True)
    keep = x.keep_keys(cache, exclude_high_norm)
    vision = x.model.vision
    total = 0
    for i in layers:
        pattern = cache[f"vision.blocks.{i}.attn.hook_pattern"]
        tokens = cache[f"vision.blocks.{i}.hook_resid_post"]
        feature = F.normalize(layer_embedding(vision, tokens), dim=-1)
        similarity = feature @ out.text_embeds.T  # [n_images, n_texts]
        total = total + per_caption(similarity, [pattern],
                                    lambda g: drop_keys(g[0].clamp(min=0).mean(1).mean(1), keep)[:, x.prefix:])
    low = total.amin(-1, keepdim=True)
    span = (total.amax(-1, keepdim=True) - low).clamp(min=1e-12)
    return Maps(out.logits_per_image.detach(), x.patch_grid((total - low) / span))
