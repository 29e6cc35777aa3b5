"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", 2024), as in WalBouss/LeGrad's wrapper: its CLIP path and its SigLIP path.

For each layer l from `start_layer` on: layer l's output tokens read out as an image embedding, its logit
with the caption embedding (the cosine LeGrad takes, scaled as the model scales it, which the normalisation
below cancels; through `hook_logits_per_image`, so a hook there shapes the maps as it shapes the scores);
the ReLU of its gradient with respect to an attention pattern A_l, averaged over heads and query rows,
prefix keys (a class token) dropped. The maps of the layers are summed, then min-max normalised per pair.
Image only. Two variants, as the authors' two paths:

- `variant="blocks"` (their CLIP path; the default on every model): A_l is block l's own attention,
  the embedding the mean of the tokens through ln_post and the projection (an intermediate class token has
  not gathered the image yet).
- `variant="probe"` (their SigLIP path, where the image is read by an attention-pooling head): the pooling
  head re-run on block l's output, A_l its probe's attention over layer l's tokens. As their
  code does, the block output enters the head without the tower's final LayerNorm (ln_post; the projection,
  where a tower has one, follows the head). Not the default: on the SigLIP demo it points at the named object
  less often than "blocks" (0.400 against 0.733, 60 two-object scenes; benchmarks/shapes_eval.py).

`correction` (the authors' `apply_correction`, on by default in their SigLIP path only): a neutral prompt's
map masks the caption's. Its map, made the same way from the plain cosine with its embedding, is summed over layers and
min-max normalised per image; where it exceeds `correction_threshold` (0.8) the caption's summed map is set
to 0 before the normalisation (a mask, not the subtraction `explain(..., neutral=)` makes). True: the
variant's default (their "a photo of a" for "probe", none for "blocks"); False: none; a string: that prompt.

`exclude_high_norm=ratio` drops the high-norm patches (`clipx.mech.high_norm`) as keys: they get 0 before the
normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...model.towers import VisionTower
from ..core import Inputs, Maps, Values, drop_keys, per_caption, register

VARIANTS = ("blocks", "probe")
AUTHORS_NEUTRAL = "a photo of a"  # their SigLIP wrapper's prompt


def layer_embedding(vision: VisionTower, tokens: torch.Tensor) -> torch.Tensor:
    """An intermediate layer's tokens [B, n, d] as an image embedding [B, D]: through the model's
    attention-pooling head where it has one; for a class-token model, the mean of the tokens through
    ln_post (LeGrad's choice: an intermediate class token has not gathered the image yet)."""
    return vision.readout(tokens, class_token=tokens.mean(1))


def probe_readout(x: Inputs, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling head re-run on a block's output tokens [B, n, d] as the authors' SigLIP path runs it (no
    ln_post before it): (its probe's attention [B, heads, 1, n], the image embedding [B, D])."""
    vision = x.model.vision
    name = "vision.head.attn.hook_pattern"
    with x.model.recording([name], requires_grad=True) as cache:
        pooled = vision.head(tokens)
    return cache[name], vision.proj(pooled) if vision.proj is not None else pooled


def check_variant(x: Inputs, variant: str) -> str:
    has_head = x.model.vision.head is not None
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    if variant == "probe" and not has_head:
        raise ValueError("variant 'probe' needs an attention-pooling head; this vision tower reads its class token "
                         "(use variant='blocks')")
    return variant


def neutral_embedding(x: Inputs, correction: str | bool, variant: str) -> torch.Tensor | None:
    """The correction's neutral prompt as a unit embedding [1, D], or None where no correction is asked for."""
    if correction is True:
        correction = AUTHORS_NEUTRAL if variant == "probe" else False
    if correction is False:
        return None
    if not isinstance(correction, str) or not correction.strip():
        raise ValueError(f"correction must be True, False or a non-empty prompt, not {correction!r}")
    if x.model.tokenizer is None:
        raise ValueError(f"correction prompt {correction!r} needs the model's tokenizer, and this model has none: "
                         "set model.tokenizer, or pass correction=False")
    tok = x.model.tokenize([correction])
    with torch.no_grad():
        return F.normalize(x.model.encode_text(tok.input_ids, tok.attention_mask), dim=-1)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """[..., n] each map to 0..1."""
    low = maps.amin(-1, keepdim=True)
    return (maps - low) / (maps.amax(-1, keepdim=True) - low).clamp(min=1e-12)


@register("legrad", Values("positive", "LeGrad (0..1 per map)"))
def legrad(x: Inputs, start_layer: int = -2, exclude_high_norm: float | None = None, variant: str = "blocks",
           correction: str | bool = True, correction_threshold: float = 0.8) -> Maps:
    variant = check_variant(x, variant)
    if not 0 <= correction_threshold <= 1:
        raise ValueError(f"correction_threshold must lie in 0..1 (the neutral map is min-max normalised), "
                         f"not {correction_threshold}")
    neutral_embed = neutral_embedding(x, correction, variant)
    layers = x.layers("vision", start_layer)
    hooks = ("hook_resid_post",) if variant == "probe" else ("attn.hook_pattern", "hook_resid_post")
    names = [f"vision.blocks.{i}.{h}" for i in layers for h in hooks]
    out, cache = x.run(list(dict.fromkeys(names + x.high_norm_names(exclude_high_norm))), requires_grad=True)
    keep = x.keep_keys(cache, exclude_high_norm)

    def reduce(grads: list[torch.Tensor]) -> torch.Tensor:
        return drop_keys(grads[0].clamp(min=0).mean(1).mean(1), keep)[:, x.prefix:]

    total, neutral_total = 0, 0
    for i in layers:
        tokens = cache[f"vision.blocks.{i}.hook_resid_post"]
        if variant == "probe":
            pattern, embedding = probe_readout(x, tokens)
        else:
            pattern, embedding = cache[f"vision.blocks.{i}.attn.hook_pattern"], layer_embedding(x.model.vision, tokens)
        feature = F.normalize(embedding, dim=-1)
        # the layer's logits, the cosine scaled (and shifted by a bias, which no gradient sees): the same map
        # after the normalisation below, and a hook on hook_logits_per_image shapes them as it shapes the scores
        logits = x.model.hooked_logits(feature, out.text_embeds)  # [n_images, n_texts]
        total = total + per_caption(logits, [pattern], reduce)
        if neutral_embed is not None:
            neutral_total = neutral_total + per_caption(feature @ neutral_embed.T, [pattern], reduce)
    if neutral_embed is not None:
        total = total.masked_fill(min_max(neutral_total) > correction_threshold, 0)
    return Maps(out.logits_per_image.detach(), x.patch_grid(min_max(total)))
