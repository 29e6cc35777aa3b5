"""A model in a few lines (`repr(model)`): its family, what each tower is, how it pools and how it scores,
where it runs. The module tree, hundreds of lines with every hook point, is `model.tree()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .towers import TextTower, VisionTower

VISION_POOLING = {"class": "the class token", "attention": "an attention-pooling head",
                  "probe": "a learned query (attention probe)"}
MLP = {"mlp": "MLP", "swiglu": "SwiGLU MLP"}
NORM = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
TEXT_POOLING = {"eos": "its first EOS", "eos_argmax": "its largest token id (OpenAI's EOS)",
                "last": "the last position", "first": "the first token ([CLS])"}


def describe(model: nn.Module) -> str:
    """The summary of a `CLIP` (which imports this module)."""
    config = model.config
    family = next(iter(type(config).model_types))
    n_params = sum(p.numel() for p in model.parameters())
    param = next(model.parameters())
    lines = [f"CLIP model, family {family!r}: {_count(n_params)} parameters, {str(param.dtype).removeprefix('torch.')} "
             f"on {param.device}, attention {model.attention_backend}"]
    if model.vision is not None:
        lines.append("  vision: " + _vision(model.vision))
    if model.text is not None:
        lines.append("  text:   " + _text(model.text))
    scale = f"exp(logit_scale)={model.exp_logit_scale().item():.4g}"  # clamped where the family clamps it
    bias = f" + logit_bias ({model.logit_bias.item():.4g})" if model.logit_bias is not None else ""
    compared = "a softmax over captions" if config.scoring == "softmax" else "a sigmoid per pair"
    lines.append(f"  logits: {scale} x cosine{bias}; probabilities by {compared}")
    lines.append("  (model.tree() prints the modules and hook points; model.config every field)")
    return "\n".join(lines)


def _tower(tower: VisionTower | TextTower) -> str:
    c = tower.config
    return (f"{tower.n_layers} layers, width {c.hidden_size}, {tower.n_heads} heads, {MLP[c.mlp_type]} "
            f"({c.hidden_act}), {NORM[c.norm_type]} {c.norm_position}-norm")


def _vision(tower: VisionTower) -> str:
    c = tower.config
    grid = "any grid (variable resolution)" if c.any_resolution else f"{c.grid_size} x {c.grid_size} grid"
    prefix = f" + {tower.prefix_tokens} class token" if tower.prefix_tokens else ""
    return (f"{_tower(tower)}; {c.image_size} px in {c.patch_size} px patches, {grid}{prefix}; "
            f"pooled by {VISION_POOLING[c.pooling]}")


def _text(tower: TextTower) -> str:
    c = tower.config
    attention = "causal" if c.causal else "bidirectional"
    return (f"{_tower(tower)}; {attention}, context {c.max_position_embeddings}, vocabulary {c.vocab_size}; "
            f"pooled at {TEXT_POOLING[c.pooling]}")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
