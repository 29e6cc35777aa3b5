"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017) through Captum's
LayerIntegratedGradients: attributions of logit[i, j] to the patch embeddings (image map, summed
over channels) and to the token embeddings (text map, summed over channels), integrating along
the straight line from a baseline input. Image baseline: pixel_values of zeros (the dataset mean
colour after normalisation) unless given; text baseline: every non-special token replaced by
`text_baseline_token` (default the pad token), BOS, EOS and padding kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import LayerIntegratedGradients

from .core import Inputs
from .registry import Maps, register


@register("integrated_gradients")
def integrated_gradients(x: Inputs, n_steps: int = 32, image_baseline: torch.Tensor | float = 0.0,
                         text_baseline_token: int | None = None, internal_batch_size: int | None = None) -> Maps:
    model = x.model
    out, _ = x.run()
    scale = model.logit_scale.exp().detach()
    text_embeds, image_embeds = out.text_embeds.detach(), out.image_embeds.detach()

    def image_logits(pixel_values: torch.Tensor) -> torch.Tensor:
        embeds = F.normalize(model.encode_image(pixel_values, x.interpolate_pos_encoding), dim=-1)
        return scale * embeds @ text_embeds.T        # [n, n_texts]

    def text_logits(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = F.normalize(model.encode_text(input_ids, attention_mask), dim=-1)
        return scale * embeds @ image_embeds.T       # [n, n_images]

    baseline = torch.as_tensor(image_baseline, dtype=x.pixel_values.dtype, device=x.pixel_values.device)
    baseline = baseline.expand_as(x.pixel_values).contiguous()
    # BOS, EOS and padding stay: the baseline is "the same caption with no words"
    positions = torch.arange(x.input_ids.shape[1], device=x.input_ids.device)
    keep = (positions == 0) | (positions >= x.eos_positions[:, None])
    fill = text_baseline_token
    if fill is None:
        fill = model.tokenizer.pad_token_id if model.tokenizer is not None else model.text.config.pad_token_id
    text_baseline = torch.where(keep, x.input_ids, torch.full_like(x.input_ids, fill))

    with torch.enable_grad():
        vision_ig = LayerIntegratedGradients(image_logits, model.vision.patch_embedding)
        image = torch.stack([vision_ig.attribute(x.pixel_values, baseline, target=j, n_steps=n_steps,
                                                 internal_batch_size=internal_batch_size).sum(1)
                             for j in range(len(x.texts))], dim=1)
        text_ig = LayerIntegratedGradients(text_logits, model.text.token_embedding)
        text = torch.stack([text_ig.attribute(x.input_ids, text_baseline, target=i, n_steps=n_steps,
                                              additional_forward_args=(x.attention_mask,),
                                              internal_batch_size=internal_batch_size).sum(-1)
                            for i in range(x.pixel_values.shape[0])], dim=0)
    return Maps(out.logits_per_image, image.detach(), text.detach() * x.attention_mask)
