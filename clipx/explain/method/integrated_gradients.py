"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017): attributions of logit[i, j] to the patch
embeddings (image map, summed over channels) and to the token embeddings (text map, summed over
channels), integrating along the straight line from a baseline input with Captum's Gauss-Legendre
quadrature, so the maps equal Captum's LayerIntegratedGradients on the embedding layers.
Image baseline: pixel_values of zeros (the dataset mean colour after normalisation) unless given;
text baseline: every non-special token replaced by `text_baseline_token` (default the pad token),
BOS, EOS and padding kept.

The path of an image does not depend on the caption, which only picks the logit: each interpolated
image goes through the vision tower once for every caption, and each caption's map is one
input-gradient backward over that graph (Captum, called per caption, would repeat the forwards);
the same for the captions' paths and the images. The embeddings go in through the towers' own
`hook_embed` points, not torch module hooks: those are per thread, module hooks are not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...errors import check_int
from ..core import Inputs, Maps, Values, register
from ..paths import baseline_pixels, row_bytes

# Rows (interpolated inputs) per forward unless internal_batch_size says: their graph is kept for one
# backward per target, so this bounds memory; see row_bytes.
ACTIVATION_BUDGET_BYTES = 1 << 30


@register("integrated_gradients", Values("signed", "attribution (logit units)"))
def integrated_gradients(x: Inputs, n_steps: int = 32, image_baseline: torch.Tensor | float = 0.0,
                         text_baseline_token: int | None = None, internal_batch_size: int | None = None) -> Maps:
    n_steps = check_int("n_steps", n_steps, minimum=1)
    if internal_batch_size is not None:
        internal_batch_size = check_int("internal_batch_size", internal_batch_size, minimum=1)
    model = x.model
    out, cache = x.run(["vision.hook_embed", "text.hook_embed"])
    text_embeds, image_embeds = out.text_embeds.detach(), out.image_embeds.detach()

    baseline = baseline_pixels(image_baseline, x.pixel_values, "image_baseline")
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

    def image_logits(embed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        # the pixels only give the patch grid its shape: the hook puts the interpolated embeddings in
        with model.hooks(fwd_hooks=[("vision.hook_embed", lambda _, hook: embed)]):
            features = model.encode_image(x.pixel_values[images], x.interpolate_pos_encoding)
        return model.hooked_logits(F.normalize(features, dim=-1), text_embeds)      # [rows, n_texts]

    def text_logits(embed: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        with model.hooks(fwd_hooks=[("text.hook_embed", lambda _, hook: embed)]):
            features = model.encode_text(x.input_ids[texts], x.attention_mask[texts])
        return model.hooked_logits(image_embeds, F.normalize(features, dim=-1)).T     # [rows, n_images]

    image_rows = internal_batch_size or rows_within_budget(model.vision, cache["vision.hook_embed"])
    text_rows = internal_batch_size or rows_within_budget(model.text, cache["text.hook_embed"])
    with torch.enable_grad():
        image = path_integral(image_logits, cache["vision.hook_embed"], image_base, n_steps, image_rows)
        text = path_integral(text_logits, cache["text.hook_embed"], text_base, n_steps, text_rows)
    image = image[:, :, x.prefix:]  # a class token is no place
    # the steps are summed in float32: the maps in the model's dtype, as every other method gives them
    dtype = out.logits_per_image.dtype
    text = text.transpose(0, 1) * x.attention_mask
    return Maps(out.logits_per_image, x.patch_grid(image).to(dtype), text.to(dtype))


def path_integral(logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                  baselines: torch.Tensor, n_steps: int, rows_per_forward: int) -> torch.Tensor:
    """Integrated gradients of every output column of `logits(embeddings, which_inputs)` with respect to
    each input [N, L, d], summed over d, in float32: [N, n_columns, L]. Captum's Gauss-Legendre steps and
    weights, its step-major order of interpolated rows; one forward per row, one backward per column."""
    from captum.attr._utils.approximation_methods import approximation_parameters  # Captum costs 0.5 s to import

    sizes, alphas = approximation_parameters("gausslegendre")
    step_sizes = torch.tensor(sizes(n_steps), dtype=torch.float32, device=inputs.device)
    alphas = torch.tensor(alphas(n_steps), dtype=inputs.dtype, device=inputs.device)
    inputs, baselines = inputs.detach(), baselines.detach()
    difference = inputs - baselines
    n = inputs.shape[0]
    total = None
    for start in range(0, n_steps * n, rows_per_forward):
        row = torch.arange(start, min(start + rows_per_forward, n_steps * n), device=inputs.device)
        step, which = row // n, row % n
        path = (baselines[which] + alphas[step, None, None] * difference[which]).requires_grad_()
        out = logits(path, which)
        columns = out.shape[1]
        for c in range(columns):
            (grad,) = torch.autograd.grad(out[:, c].sum(), path, retain_graph=c < columns - 1)
            weighted = (grad * difference[which]).float().sum(-1) * step_sizes[step, None]     # [rows, L]
            if total is None:
                total = weighted.new_zeros(n, columns, weighted.shape[-1])
            total[:, c].index_add_(0, which, weighted.detach())
    return total


def rows_within_budget(tower, embeddings: torch.Tensor) -> int:
    """Interpolated inputs per forward whose kept graph fits ACTIVATION_BUDGET_BYTES."""
    return max(1, ACTIVATION_BUDGET_BYTES // row_bytes(tower, embeddings, tower.n_layers))


def _embedding(model, tower: str, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tokens a tower embeds (its `hook_embed`) for the inputs `forward` runs."""
    with torch.no_grad(), model.recording(f"{tower}.hook_embed") as cache:
        forward()
    return cache[f"{tower}.hook_embed"]
