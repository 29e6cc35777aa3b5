"""How a model's parameters are named in Hugging Face's layout: clipx's module names (TransformerLens's
`blocks.3.attn`, `ln1`) -> transformers' `CLIPModel` keys, one rule per kind of module, and the `Layout`
a family gives to rename and reshape its own checkpoints' tensors.

Hugging Face is the pivot: OpenAI / open_clip state dicts are converted to HF keys first
(`families/openai.py`), and clipx's own names are derived from HF's by `hf_key`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

TOWER_PREFIX = {"vision": "vision_model", "text": "text_model"}
PROJECTION = {"vision": "visual_projection", "text": "text_projection"}
_BLOCK_RENAMES = {"attn": "self_attn", "ln1": "layer_norm1", "ln2": "layer_norm2", "mlp": "mlp"}
TOWER_RENAMES = {
    "ln_pre": "pre_layrnorm", "ln_post": "post_layernorm", "ln_final": "final_layer_norm",
    "token_embedding": "embeddings.token_embedding", "position_embedding": "embeddings.position_embedding",
    "patch_embedding": "embeddings.patch_embedding", "class_embedding": "embeddings.class_embedding",
    # modules transformers' CLIP has not (a clipx config may ask for them): named as their families name them
    "patch_norm": "embeddings.patch_norm", "token_type_embedding": "embeddings.token_type_embedding",
    "ln_embed": "embeddings.layer_norm", "head": "head",
}

# the joint model's own parameters, which tower-only checkpoints lack
JOINT_PARAMETERS = ("logit_scale", "logit_bias")

def renamed_keys(blocks: dict[str, str], towers: dict[str, str],
                 head: dict[str, str] | None = None) -> Callable[[str], str]:
    """An `hf_key` from a family's renames: of the modules in a block (under `encoder.layers.N.`), of the
    tower's other modules (the first name after the tower), and, where given, of those in the pooling head."""
    def hf_key(key: str) -> str:
        if key in JOINT_PARAMETERS:
            return key
        tower, rest = key.split(".", 1)
        if rest.startswith("proj."):
            return f"{PROJECTION[tower]}.{rest.removeprefix('proj.')}"
        if match := re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(.+)", rest):
            i, module, tail = match.groups()
            rest = f"encoder.layers.{i}.{blocks[module]}.{tail}"
        elif head is not None and rest.startswith("head."):
            name, _, kind = rest.removeprefix("head.").rpartition(".")
            rest = "head." + (f"{head[name]}.{kind}" if name else head[kind])
        else:
            module, _, tail = rest.partition(".")
            rest = towers[module] + (f".{tail}" if tail else "")
        return f"{TOWER_PREFIX[tower]}.{rest}"
    return hf_key


# the Hugging Face `CLIPModel` name of a clipx state-dict key
hf_key = renamed_keys(_BLOCK_RENAMES, TOWER_RENAMES)


def _same(state: StateDict) -> StateDict:
    return state

@dataclass(frozen=True)
class Layout:
    """How one family's Hugging Face checkpoints name and shape the weights."""

    hf_key: Callable[[str], str]                          # clipx key -> checkpoint key
    from_hf: Callable[[StateDict], StateDict] = _same     # checkpoint tensors -> the shapes hf_key's names hold
    to_hf: Callable[[StateDict], StateDict] = _same       # and back, for save_pretrained
    # whether a tower-only checkpoint keeps the `vision_model.` / `text_model.` prefix
    tower_prefixed: Callable[[Any], bool] = lambda tower: tower.proj is not None

# CLIPVisionModelWithProjection keeps its prefix; a bare CLIPVisionModel has none
CLIP_LAYOUT = Layout(hf_key=hf_key)

def split_in_proj(prefix: str, key: str, value: torch.Tensor) -> StateDict:
    """A fused `...in_proj_weight` / `in_proj_bias` (torch's MultiheadAttention) as `{prefix}q_proj.weight`, ..."""
    kind = key.rsplit("_", 1)[1]  # weight / bias
    return {f"{prefix}{name}_proj.{kind}": part.clone() for name, part in zip("qkv", value.chunk(3, dim=0))}
