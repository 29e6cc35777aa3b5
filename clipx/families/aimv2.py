"""The AIMv2 family (Fini et al., "Multimodal Autoregressive Pre-training of Large Vision Encoders",
CVPR 2025), in its LiT image-text checkpoints (`apple/aimv2-large-patch14-224-lit`): its readout, its
config.json and its Hugging Face key layout, as transformers' `Aimv2Model` has them.

The blocks are Llama's rather than CLIP's: RMSNorm (no mean, no bias), a SwiGLU MLP with SiLU, no
biases in attention or MLP unless `qkv_bias` / `mlp_bias` say so. The vision tower has no class
token and no ln_pre: the patch tokens are RMS-normalised *before* the learned positions are added,
the last block's tokens go through a final RMSNorm (ln_post), and a pooling head reads them: a learned
probe (`cls_token`) is the query itself (no q_proj), k_proj / v_proj read the tokens, and
`output_proj` (with a bias) ends the head, with no norm or MLP after it. The text tower is causal
and pooled at the first `eos_token_id`. Logits are CLIP's, exp(logit_scale) clamped at
`max_logit_scale`, a softmax over captions.

Two things differ from transformers on purpose:
- The text tower is always causal, as AIMv2's LiT tower was trained. transformers' is causal only
  when an attention_mask is passed, and under sdpa only when that mask holds padding (an all-ones
  mask or none leaves it bidirectional), so its outputs depend on the backend and the batch.
- At another image size (`interpolate_pos_encoding=True`) clipx resamples the learned position
  table bicubically, as for CLIP. transformers' Aimv2 has no such option (it ignores the flag and
  fails on the shape), so that is clipx's extension, not a parity claim.
Not implemented, and refused by name: `is_native` (2-D sin-cos positions per image size) and
`use_head=False` (a backbone without the pooling head, so no image embedding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..model.config import CLIPConfig, TextConfig, VisionConfig
from ..model.layout import Layout, renamed_keys

# config.json's names for the clipx fields they fill
_RENAMES = {"rms_norm_eps": "layer_norm_eps", "qkv_bias": "attention_bias"}
_THEIRS = {ours: theirs for theirs, ours in _RENAMES.items()}
# clipx fields AIMv2's config.json has not: the text is pooled by eos_token_id alone, and the
# projection's width is the joint projection_dim
_UNUSED = ("bos_token_id", "pad_token_id", "projection_dim")
# the fields of transformers' Aimv2 configs clipx does not implement: (name, the value clipx serves, why not)
_REFUSED = (("is_native", False, "2-D sin-cos position embeddings computed per image size (the native-"
                                 "resolution checkpoints) are not implemented; clipx serves the learned table"),
            ("use_head", True, "without the attention-pooling head the vision tower has no image embedding "
                               "(a backbone); clipx needs the head"))


@dataclass
class Aimv2VisionConfig(VisionConfig):
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 24
    num_attention_heads: int = 8
    patch_size: int = 14
    hidden_act: str = "silu"
    norm_type: str = "rmsnorm"
    mlp_type: str = "swiglu"
    attention_bias: bool = False
    mlp_bias: bool = False
    pooling: str = "probe"
    pre_layernorm: bool = False
    patch_bias: bool = True
    patch_norm: bool = True

    model_type = "aimv2_vision_model"


@dataclass
class Aimv2TextConfig(TextConfig):
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    hidden_act: str = "silu"
    norm_type: str = "rmsnorm"
    mlp_type: str = "swiglu"
    attention_bias: bool = False
    mlp_bias: bool = False

    model_type = "aimv2_text_model"


def _tower_dict(d: dict[str, Any], where: str = "") -> dict[str, Any]:
    """config.json's tower fields under clipx's names; what clipx does not implement is refused by name."""
    for name, served, why in _REFUSED:
        if name in d and d[name] != served:
            raise ValueError(f"{where}{name} is {d[name]!r}: {why}")
    d = {_RENAMES.get(k, k): v for k, v in d.items() if k not in _UNUSED}
    if "eos_token_id" in d and (isinstance(d["eos_token_id"], bool) or not isinstance(d["eos_token_id"], int)):
        raise ValueError(f"{where}eos_token_id is {d['eos_token_id']!r}: the text is pooled at the first "
                         "eos_token_id, which must be one integer")
    return d


@dataclass
class Aimv2Config(CLIPConfig):
    text_config: TextConfig | None = field(default_factory=Aimv2TextConfig)
    vision_config: VisionConfig | None = field(default_factory=Aimv2VisionConfig)
    max_logit_scale: float | None = 100.0

    model_types = {"aimv2": None, "aimv2_vision_model": "vision", "aimv2_text_model": "text"}
    tower_configs = {"text_config": Aimv2TextConfig, "vision_config": Aimv2VisionConfig}

    @classmethod
    def read(cls, d: dict[str, Any], tower: str | None) -> Aimv2Config:
        if tower is None:
            return super().read(d, tower)
        # Aimv2VisionModel / Aimv2TextModel: no projection (the pooled output is the embedding)
        key = f"{tower}_config"
        one = cls.tower_configs[key].from_dict({**_tower_dict(d), "projection_dim": None})
        return cls(**{k: one if k == key else None for k in cls.tower_configs}, projection_dim=one.hidden_size)

    @classmethod
    def tower_dict(cls, d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        return _tower_dict(d, where)

    @classmethod
    def layout(cls) -> Layout:
        return LAYOUT

    def to_dict(self) -> dict[str, Any]:
        """transformers' Aimv2Config layout (clipx's own mode fields ride along; transformers ignores them)."""
        towers = {}
        for key, tower in (("text_config", self.text_config), ("vision_config", self.vision_config)):
            if tower is None:
                continue
            d = {_THEIRS.get(k, k): v for k, v in dataclasses.asdict(tower).items() if k not in _UNUSED}
            d["model_type"] = tower.model_type
            if key == "vision_config":
                d.update({name: served for name, served, _ in _REFUSED})
            towers[key] = d
        if len(towers) == 1:
            (key, d), = towers.items()
            return {**d, "architectures": ["Aimv2VisionModel" if key == "vision_config" else "Aimv2TextModel"]}
        return {"architectures": ["Aimv2Model"], "model_type": "aimv2", "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value, **self.joint_modes(), **towers}


# clipx's module names -> transformers' Aimv2 names, inside a tower and inside a block
_TOWER = {"patch_embedding": "embeddings.patch_embed", "patch_norm": "embeddings.rms_norm",
          "position_embedding": "embeddings.position_embedding", "token_embedding": "embeddings.token_embedding",
          "ln_post": "rms_norm", "ln_final": "rms_norm"}
_BLOCK = {"ln1": "rms_norm1", "ln2": "rms_norm2", "attn": "attention", "mlp": "ffn"}
_HEAD = {"probe": "cls_token", "attn.k_proj": "k_proj", "attn.v_proj": "v_proj", "attn.out_proj": "output_proj"}


# Aimv2VisionModel / Aimv2TextModel are saved without a prefix (and have no projection)
LAYOUT = Layout(hf_key=renamed_keys(_BLOCK, _TOWER, _HEAD), tower_prefixed=lambda tower: False)
