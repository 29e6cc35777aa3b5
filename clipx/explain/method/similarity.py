"""Token-to-patch similarity: which patches match the caption, and which match each word.

`tokens` (default): every patch token of the last layer in the joint space as the readout would
put it alone (`VisionTower.patch_features`: through ln_post, an attention-pooling head attending to
that patch only where there is one, and the visual projection where there is one), cosine with the
caption embedding (image map); every caption token's final hidden state through the text
projection, cosine with the image embedding (text map) and with every patch (`token_maps`,
[n_images, n_texts, L, grid_h, grid_w]).
`maskclip` (Zhou, Loy & Dai, "Extract Free Dense Labels from CLIP", ECCV 2022): the patch
features instead come through the last block's value path alone, out_proj(v_proj(ln1(x))),
skipping the query-key attention, the residual and the MLP, which keeps them local.
`sclip`, `clearclip`, `naclip` (training-free open-vocabulary segmentation, see `last_block` for the
papers and their code): the patch features come through the last block as each paper rewires it, for
this call only: SCLIP's correlative attention softmax(q q^T s) + softmax(k k^T s) in the block as it
stands (residual and MLP kept, as its code has it); ClearCLIP's self-self attention softmax(q q^T s) with
no residual and no MLP; NACLIP's softmax(k k^T s + a Gaussian over the patch grid, std 5 patches) with no
residual and no MLP. The attention runs over every token of the last block (a class token included, as
in the papers); a SigLIP has none, and its patches then go through the pooling head's per-patch readout
as for MaskCLIP. MaskCLIP's and these variants' rewired block runs from its weights, outside its hook
points. A post-norm tower (no ln1(x) to read values from) is refused by name.
The maps are cosines, which no logit enters: a hook on `hook_logits_per_image` changes the scores only,
and a warning says so.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ...errors import caller_level

from ...model.towers import refuse
from ..core import Inputs, Maps, Values, register
from . import last_block

VARIANTS = ("tokens", "maskclip", *last_block.VARIANTS)


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown similarity variant {variant!r}; choose one of {', '.join(VARIANTS)}")


@register("similarity", Values("signed", "cosine similarity"))
def similarity(x: Inputs, variant: str = "tokens") -> Maps:
    check_variant(variant)
    if x.model.hook_logits_per_image.fwd_hooks:
        warnings.warn("similarity's maps are cosines, which no logit enters: the hook on hook_logits_per_image "
                      "changes its scores, not its maps (the gradient and perturbation methods follow it)",
                      stacklevel=caller_level())
    vision, text = x.model.vision, x.model.text
    if variant != "tokens":
        needs = "needs the last block's value path" if variant == "maskclip" else "rewires the last block's attention"
        refuse(vision.cannot_value_path(), f"similarity variant {variant!r} {needs}")
    name = f"vision.blocks.{vision.n_layers - 1}." + ("hook_resid_post" if variant == "tokens" else "hook_resid_pre")
    with torch.no_grad():
        out, cache = x.run([name])
        tokens = cache[name]
        if variant in last_block.VARIANTS:
            tokens = last_block.rewired_last_block(vision, tokens, variant, x.grid, x.prefix)
        patches = tokens[:, x.prefix:]
        if variant == "maskclip":
            patches = vision.value_path(patches)
        patches = F.normalize(vision.patch_features(patches), dim=-1)          # [B, N, D]
        words = F.normalize(text.token_features(out.text_model_output.last_hidden_state), dim=-1)  # [T, L, D]
        words = words * x.attention_mask[..., None]  # padding matches nothing
        image = torch.einsum("bnd,td->btn", patches, out.text_embeds)
        text_map = torch.einsum("tld,bd->btl", words, out.image_embeds)
        cube = torch.einsum("bnd,tld->btln", patches, words)
    return Maps(out.logits_per_image, x.patch_grid(image), text_map, x.patch_grid(cube))
