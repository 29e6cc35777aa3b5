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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...model.towers import refuse
from ..core import Inputs, Maps, Values, register

VARIANTS = ("tokens", "maskclip")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown similarity variant {variant!r}; choose one of {', '.join(VARIANTS)}")


@register("similarity", Values("signed", "cosine similarity"))
def similarity(x: Inputs, variant: str = "tokens") -> Maps:
    check_variant(variant)
    vision, text = x.model.vision, x.model.text
    if variant == "maskclip":
        refuse(vision.cannot_value_path(), "similarity variant 'maskclip' needs the last block's value path")
    name = f"vision.blocks.{vision.n_layers - 1}." + ("hook_resid_pre" if variant == "maskclip" else "hook_resid_post")
    with torch.no_grad():
        out, cache = x.run([name])
        patches = cache[name][:, x.prefix:]
        if variant == "maskclip":
            patches = vision.value_path(patches)
        patches = F.normalize(vision.patch_features(patches), dim=-1)          # [B, N, D]
        words = F.normalize(text.token_features(out.text_model_output.last_hidden_state), dim=-1)  # [T, L, D]
        words = words * x.attention_mask[..., None]  # padding matches nothing
        image = torch.einsum("bnd,td->btn", patches, out.text_embeds)
        text_map = torch.einsum("tld,bd->btl", words, out.image_embeds)
        cube = torch.einsum("bnd,tld->btln", patches, words)
    return Maps(out.logits_per_image, x.patch_grid(image), text_map, x.patch_grid(cube))
