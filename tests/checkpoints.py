"""Checkpoints written in the hub's own layout by transformers, for clipx to load.

No machine here reaches the hub, so every test model is a randomly initialised
`transformers.CLIPModel` (or `SiglipModel`) saved with `save_pretrained`, with CLIP's real
tokenizer files and a `preprocessor_config.json` beside it.
"""

from __future__ import annotations

import torch
import transformers

from clipx.assets import CLIP_BPE_DIR

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=49408)
TINY_VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)
# ViT-B's text tower, for the slow parity checks at real shapes
VIT_B_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                  max_position_embeddings=77, vocab_size=49408)


def hf_clip_config(text=TINY_TEXT, vision=TINY_VISION, projection_dim=24, **text_overrides):
    text = {**text, **text_overrides}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim,
                                   logit_scale_init_value=4.6)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """transformers initialises LayerNorms to identity; perturb them so parity covers them too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def save_hf(model: torch.nn.Module, folder, image_size: int | None = None) -> None:
    """save_pretrained plus the tokenizer and processor files a hub repository has."""
    model.save_pretrained(folder)
    # from_pretrained: transformers 5 ignores vocab_file / merges_file passed to the constructor
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
    if image_size is not None:
        transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                        crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)


def make_checkpoint(folder, seed: int = 0, attn: str = "eager", **overrides):
    torch.manual_seed(seed)
    config = hf_clip_config(**overrides)
    config._attn_implementation = attn
    model = randomise(transformers.CLIPModel(config).eval(), seed)
    save_hf(model, folder, image_size=config.vision_config.image_size)
    return model


# SigLIP: a transformers SiglipModel, with CLIP's BPE (the tiny vocabulary is CLIP's size)
SIGLIP_TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=16, vocab_size=49408)
SIGLIP_VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     image_size=32, patch_size=8)


def hf_siglip(text=SIGLIP_TEXT, vision=SIGLIP_VISION, seed=0, attn="eager") -> transformers.SiglipModel:
    torch.manual_seed(seed)
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    config._attn_implementation = attn
    model = randomise(transformers.SiglipModel(config).eval(), seed)
    with torch.no_grad():  # SigLIP's trained values, so logits have their real scale
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)
    return model


def save_siglip(model, folder) -> None:
    model.save_pretrained(folder)
    # CLIP's BPE beside the weights: the tiny vocabulary is CLIP's size; SigLIP's own tokenizers are
    # tested in their own file
    transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR).save_pretrained(folder)
