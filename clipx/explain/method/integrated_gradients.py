"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017) through Captum: attributions of
logit[i, j] to the patch embeddings (image map, summed over channels) and to the token embeddings
(text map, summed over channels), integrating along the straight line from a baseline input.
Image baseline: pixel_values of zeros (the dataset mean colour after normalisation) unless given;
text baseline: every non-special token replaced by `text_baseline_token` (default the pad token),
BOS, EOS and padding kept.

What Captum's LayerIntegratedGradients computes, but with the embeddings fed in through the towers'
own `hook_embed` points rather than torch module hooks: those are per thread, module hooks are
not, and two threads explaining with one model would interpolate each other's embeddings.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...errors import check_has_values, check_int
from ..core import Inputs, Maps, Values, register


@register("integrated_gradients", Values("signed", "attribution (logit units)"))
def integrated_gradients(x: Inputs, n_steps: int = 32, image_baseline: torch.Tensor | float = 0.0,
                         text_baseline_token: int | None = None, internal_batch_size: int | None = None) -> Maps:
    from captum.attr import IntegratedGradients  # imported here: Captum costs `import clipx` half a second

    n_steps = check_int("n_steps", n_steps, minimum=1)
    if internal_batch_size is not None:
        internal_batch_size = check_int("internal_batch_size", internal_batch_size, minimum=1)
    model = x.model
    out, cache = x.run(["vision.hook_embed", "text.hook_embed"])
    text_embeds, image_embeds = out.text_embeds.detach(), out.image_embeds.detach()

    baseline = _image_baseline(image_baseline, x.pixel_values)
    # special tokens (BOS, EOS, padding) stay: the baseline is "the same caption with no words"
    tok = model.tokenizer if model.tokenizer is not None else model.text.config
    special = [i for i in (getattr(tok, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id"))
               if i is not None]
    keep = torch.isin(x.input_ids, torch.tensor(special, device=x.input_ids.device)) | (x.attention_mask == 0)
    fill = text_baseline_token
    if fill is None:
        fill = tok.pad_token_id
    text_baseline = torch.where(keep, x.input_ids, torch.full_like(x.input_ids, fill))
    image_base = _embedding(model, "vision", lambda: model.encode_image(baseline, x.interpolate_pos_encoding))
    text_base = _embedding(model, "text", lambda: model.encode_text(text_baseline, x.attention_mask))

    def image_logits(embed: torch.Tensor) -> torch.Tensor:
        # the pixels only give the patch grid its shape: the hook puts the interpolated embeddings in
        pixels = x.pixel_values[:1].expand(embed.shape[0], -1, -1, -1)
        with model.hooks(fwd_hooks=[("vision.hook_embed", lambda _, hook: embed)]):
            features = model.encode_image(pixels, x.interpolate_pos_encoding)
        return model.hooked_logits(F.normalize(features, dim=-1), text_embeds)      # [n, n_texts]

    def text_logits(embed: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with model.hooks(fwd_hooks=[("text.hook_embed", lambda _, hook: embed)]):
            features = model.encode_text(input_ids, attention_mask)
        return model.hooked_logits(image_embeds, F.normalize(features, dim=-1)).T     # [n, n_images]

    options = dict(n_steps=n_steps, internal_batch_size=internal_batch_size)
    with torch.enable_grad():
        image_ig, text_ig = IntegratedGradients(image_logits), IntegratedGradients(text_logits)
        image = torch.stack([image_ig.attribute(cache["vision.hook_embed"], image_base, target=j, **options)
                             [:, x.prefix:].sum(-1) for j in range(len(x.texts))], dim=1)  # a class token is no place
        text = torch.stack([text_ig.attribute(cache["text.hook_embed"], text_base, target=i,
                                              additional_forward_args=(x.input_ids, x.attention_mask),
                                              **options).sum(-1)
                            for i in range(x.pixel_values.shape[0])], dim=0)
    # Captum sums its steps in float32: the maps in the model's dtype, as every other method gives them
    dtype = out.logits_per_image.dtype
    return Maps(out.logits_per_image, x.patch_grid(image.detach()).to(dtype), (text.detach() * x.attention_mask).to(dtype))


def _image_baseline(value: torch.Tensor | float, pixel_values: torch.Tensor) -> torch.Tensor:
    """`image_baseline` as pixel_values [B, 3, H, W]: one number, one image [3, H, W] for all, or one per image."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"image_baseline must be a number (in normalised pixels: 0.0 is the mean colour) or a "
                        f"tensor of preprocessed pixels, got {value!r:.80}")
    check_has_values("image_baseline", value)
    baseline = torch.as_tensor(value, dtype=pixel_values.dtype, device=pixel_values.device)
    try:
        baseline = baseline.expand_as(pixel_values).contiguous()
    except RuntimeError:
        raise ValueError(f"image_baseline of shape {tuple(baseline.shape)} does not fit the pixel_values "
                         f"{tuple(pixel_values.shape)}: give one number, one image [3, H, W] or one per image") from None
    if not torch.isfinite(baseline).all():
        raise ValueError("image_baseline holds NaN or infinite values")
    return baseline


def _embedding(model, tower: str, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tokens a tower embeds (its `hook_embed`) for the inputs `forward` runs."""
    with torch.no_grad(), model.recording(f"{tower}.hook_embed") as cache:
        forward()
    return cache[f"{tower}.hook_embed"]

