"""The SigLIP family (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023; SigLIP 2,
Tschannen et al., 2025, in its fixed-resolution checkpoints): its readout, its config.json and its
Hugging Face key layout, as transformers' `SiglipModel` has them.

The blocks are CLIP's. What differs is the readout: no class token (every token is a patch), no
ln_pre, a patch embedding with a bias; the image pooled by an attention-pooling head (a learned
probe attending over the tokens after ln_post, then an MLP); a bidirectional text tower pooled at
its last position (captions are padded to the context, so that is padding) through a linear head
with a bias; logits exp(scale) * cos + bias, each pair scored by a sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.layout import JOINT_PARAMETERS, Layout, StateDict, split_in_proj
from ..model.layout import hf_key as clip_hf_key
from ..model.config import CLIPConfig, TextConfig, VisionConfig, _sub_config
_HEAD_ATTENTION = "vision_model.head.attention."


@dataclass
class SiglipVisionConfig(VisionConfig):
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    projection_dim: int | None = None  # the pooling head's output is the embedding
    pooling: str = "attention"
    pre_layernorm: bool = False
    patch_bias: bool = True

    model_type = "siglip_vision_model"


@dataclass
class SiglipTextConfig(TextConfig):
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    vocab_size: int = 32000
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    projection_dim: int | None = None  # the head's width (config.json's projection_size): hidden_size if unset
    projection_bias: bool = True
    causal: bool = False
    pooling: str = "last"
    pad_to_max_length: bool = True

    model_type = "siglip_text_model"

    def __post_init__(self) -> None:
        if self.projection_dim is None:
            self.projection_dim = self.hidden_size
        super().__post_init__()


def _tower_dict(d: dict[str, Any]) -> dict[str, Any]:
    """config.json's tower fields as clipx's: the head's width is projection_size there, and the
    token ids (unused: SigLIP pools the last position) may be lists or out of the vocabulary."""
    d = {k: v for k, v in d.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id", "projection_dim")}
    if d.get("vision_use_head", True) is not True:
        raise ValueError("vision_use_head is false: this vision tower has no pooling head, so no image "
                         "embedding (a backbone for a VLM); clipx needs SigLIP's head")
    if "projection_size" in d:
        d["projection_dim"] = d.pop("projection_size")
    return d


@dataclass
class SiglipConfig(CLIPConfig):
    text_config: TextConfig | None = field(default_factory=SiglipTextConfig)
    vision_config: VisionConfig | None = field(default_factory=SiglipVisionConfig)
    projection_dim: int = 768  # not in SigLIP's config.json: the embeddings' width, for reference
    logit_scale_init_value: float = math.log(10.0)  # SigLIP's initial temperature 10 and bias -10
    logit_bias_init_value: float = -10.0
    scoring: str = "sigmoid"
    logit_bias: bool = True

    model_types = {"siglip": None, "siglip_vision_model": "vision", "siglip_text_model": "text"}
    tower_configs = {"text_config": SiglipTextConfig, "vision_config": SiglipVisionConfig}
    architectures = {None: "SiglipModel", "vision_config": "SiglipVisionModel", "text_config": "SiglipTextModel"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vision_config is not None and self.text_config is not None \
                and self.vision_config.hidden_size != self.text_config.projection_dim:
            raise ValueError(f"the image embedding (vision_config.hidden_size={self.vision_config.hidden_size}) "
                             f"and the text embedding (text_config.projection_size={self.text_config.projection_dim}) "
                             "must have the same width")

    @classmethod
    def read(cls, d: dict[str, Any], tower: str | None) -> SiglipConfig:
        if tower is not None:
            config_cls = cls.tower_configs[f"{tower}_config"]
            one = config_cls.from_dict(_tower_dict(d))
            return cls(text_config=one if tower == "text" else None, vision_config=one if tower == "vision" else None,
                       projection_dim=one.projection_dim or one.hidden_size)
        towers = {key: config_cls.from_dict(_tower_dict(_sub_config(d, key)), where=f"{key}.")
                  for key, config_cls in cls.tower_configs.items()}
        return cls(**towers, projection_dim=towers["vision_config"].hidden_size, **cls.joint_fields(d))

    def default_processor(self) -> dict[str, Any]:
        """SigLIP's recipe: the whole image resized to the model's size (no crop), mean = std = 0.5."""
        n = self.vision_config.image_size
        return {"size": {"height": n, "width": n}, "do_center_crop": False, "crop_size": {"height": n, "width": n},
                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}

    @classmethod
    def layout(cls):
        return LAYOUT

    def to_dict(self) -> dict[str, Any]:
        """transformers' SiglipConfig layout."""
        towers = {}
        for key, tower in (("text_config", self.text_config), ("vision_config", self.vision_config)):
            if tower is None:
                continue
            d = {k: v for k, v in tower.to_dict().items() if k != "projection_dim"}
            if key == "text_config":
                d["projection_size"] = tower.projection_dim
            else:
                d["vision_use_head"] = True
            towers[key] = d
        if len(towers) == 1:
            (key, d), = towers.items()
            return {**d, "architectures": [self.architectures[key]]}
        model_type = next(iter(self.model_types))
        return {"architectures": [self.architectures[None]], "model_type": model_type, **towers, **self.joint_modes()}


def hf_key(key: str) -> str:
    """The Hugging Face `SiglipModel` name of a clipx state-dict key. The pooling head's q/k/v get
    names of their own here; `from_hf` / `to_hf` split and fuse transformers' in_proj for them."""
    if key.startswith("text.proj."):
        return "text_model.head." + key.removeprefix("text.proj.")
    if key.startswith("vision.head."):
        rest = key.removeprefix("vision.head.")
        for ours, theirs in (("attn.", "attention."), ("ln.", "layernorm.")):
            if rest.startswith(ours):
                rest = theirs + rest.removeprefix(ours)
        return "vision_model.head." + rest
    return clip_hf_key(key)


def from_hf(state: StateDict) -> StateDict:
    """transformers' tensors under `hf_key`'s names: the head's fused in_proj split into q/k/v, and the
    one-element logit_scale / logit_bias as scalars."""
    out = {}
    for key, value in state.items():
        if key.startswith(_HEAD_ATTENTION + "in_proj_"):
            out.update(split_in_proj(_HEAD_ATTENTION, key, value))
        elif key in JOINT_PARAMETERS and value.numel() == 1:
            out[key] = value.reshape(())
        else:
            out[key] = value
    return out


def to_hf(state: StateDict) -> StateDict:
    """`from_hf` undone: the layout transformers' SiglipModel loads."""
    out = {}
    for key, value in state.items():
        if key.startswith(_HEAD_ATTENTION) and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            kind = key.rsplit(".", 1)[1]
            if key.split(".")[-2] == "q_proj":
                parts = [state[f"{_HEAD_ATTENTION}{name}_proj.{kind}"] for name in "qkv"]
                out[f"{_HEAD_ATTENTION}in_proj_{kind}"] = torch.cat(parts).contiguous()
        elif key in JOINT_PARAMETERS:
            out[key] = value.reshape(1)
        else:
            out[key] = value
    return out


# SigLIP's tower-only models (SiglipVisionModel, SiglipTextModel) are saved without a prefix
LAYOUT = Layout(hf_key=hf_key, from_hf=from_hf, to_hf=to_hf, tower_prefixed=lambda tower: False)
