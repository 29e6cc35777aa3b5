"""Model configuration, read from and written to Hugging Face's `config.json` layout."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CheckpointError
from ..files import read_json, write_json
from .layout import CLIP_LAYOUT, Layout

# Fields that size the model: a float (1e9), a string or a bool in their place is an error, not a guess.
_POSITIVE_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_channels", "image_size", "patch_size", "vocab_size", "max_position_embeddings")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
NORM_TYPES = ("layernorm", "rmsnorm")
MLP_TYPES = ("mlp", "swiglu")
VISION_POOLING = ("class", "attention", "probe")
PATCH_EMBEDDINGS = ("conv", "linear")
POSITION_RESIZES = ("bicubic", "bilinear_antialias")
TEXT_POOLING = ("eos", "eos_argmax", "last", "first")
_JOINT_MODES = ("scoring", "logit_bias", "logit_bias_init_value", "max_logit_scale")


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _check_projection_dim(value: Any) -> None:
    if value is not None:
        _check_int("projection_dim", value)


@dataclass
class TowerConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = 512
    # The blocks, as data (timm's norm_layer / mlp_layer / attn options): each family sets its own, and
    # config.json carries them, so a saved config describes its model whole.
    norm_type: str = "layernorm"       # "layernorm", or "rmsnorm" (AIMv2: no mean, no bias)
    norm_position: str = "pre"         # "pre": x + f(norm(x)) (CLIP); "post": norm(x + f(x)) (BERT)
    mlp_type: str = "mlp"              # "mlp": fc2(act(fc1(x))); "swiglu": down(act(gate(x)) * up(x))
    attention_bias: bool = True        # biases of q, k, v and the output projection
    mlp_bias: bool = True
    projection_bias: bool = False      # the final projection's (SigLIP's text head has one)

    def __post_init__(self) -> None:
        _check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_choice("norm_position", self.norm_position, ("pre", "post"))
        _check_choice("mlp_type", self.mlp_type, MLP_TYPES)
        for name in ("attention_bias", "mlp_bias", "projection_bias"):
            _check_bool(name, getattr(self, name))
        for name in _POSITIVE_INTS:
            if hasattr(self, name):
                _check_int(name, getattr(self, name))
        for name in _TOKEN_IDS:
            if hasattr(self, name) and (getattr(self, name) is not None or name == "eos_token_id"):
                _check_int(name, getattr(self, name), minimum=0)
        _check_projection_dim(self.projection_dim)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} does not divide "
                             f"hidden_size={self.hidden_size}")
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"hidden_act must be a string such as 'quick_gelu', got {self.hidden_act!r}")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, (int, float)) \
                or not 0 < self.layer_norm_eps < 1:
            raise ValueError(f"layer_norm_eps must be a number between 0 and 1, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "TowerConfig":
        """`where`: the key path of `d` in config.json ("vision_config."), to name a bad field exactly."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except ValueError as e:
            raise ValueError(where + str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = self.model_type
        return d


@dataclass
class VisionConfig(TowerConfig):
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32

    # The readout: how the tower's tokens become its embedding.
    pooling: str = "class"       # "class": a class token through ln_post; "attention": a learned probe's query
                                 # attends over the tokens, then an MLP (SigLIP); "probe": the probe is the query
                                 # itself, then the output projection alone (AIMv2)
    pre_layernorm: bool = True   # ln_pre after the embeddings
    patch_bias: bool = False     # the patch embedding has a bias
    patch_norm: bool = False     # a norm on the patch tokens before the positions are added (AIMv2)
    # "conv": a Conv2d over images [B, C, H, W]; "linear": a Linear over patches flattened (row, column,
    # channel), which takes images too, or patches [B, L, p*p*C] of images of any grid with their
    # spatial_shapes and padding mask (NaFlex): such a tower runs at any resolution
    patch_embedding: str = "conv"
    # how the learned positions (a square grid of image_size / patch_size) are resized to another grid:
    # "bicubic" (CLIP's interpolate_pos_encoding), or "bilinear_antialias" (in float32, per image: NaFlex)
    position_resize: str = "bicubic"

    model_type = "clip_vision_model"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("pooling", self.pooling, VISION_POOLING)
        _check_choice("patch_embedding", self.patch_embedding, PATCH_EMBEDDINGS)
        _check_choice("position_resize", self.position_resize, POSITION_RESIZES)
        for name in ("pre_layernorm", "patch_bias", "patch_norm"):
            _check_bool(name, getattr(self, name))

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: the class token a class-token readout needs, else none."""
        return 1 if self.pooling == "class" else 0

    @property
    def grid_size(self) -> int:
        """The side of the learned position grid."""
        return self.image_size // self.patch_size

    @property
    def any_resolution(self) -> bool:
        """Whether the tower takes any grid as it is (no interpolate_pos_encoding to ask for)."""
        return self.patch_embedding == "linear"


@dataclass
class TextConfig(TowerConfig):
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    causal: bool = True          # each token sees only those before it
    # where a caption is pooled: "eos": its first eos_token_id; "eos_argmax": its largest id (OpenAI's CLIP,
    # whose EOS 49407 is the largest id: what transformers does for configs that say eos_token_id=2);
    # "last": the last position (SigLIP); "first": the first ([CLS], BERT)
    pooling: str = "eos"
    pad_to_max_length: bool = False  # trained on captions always padded to the context (SigLIP)
    final_norm: bool = True      # ln_final after the blocks
    embedding_norm: bool = False  # a norm on token + position embeddings, before the blocks (BERT)
    type_vocab_size: int = 0     # token-type embeddings (BERT's segment ids); 0: none

    model_type = "clip_text_model"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("pooling", self.pooling, TEXT_POOLING)
        for name in ("causal", "pad_to_max_length", "final_norm", "embedding_norm"):
            _check_bool(name, getattr(self, name))
        _check_int("type_vocab_size", self.type_vocab_size, minimum=0)


@dataclass
class CLIPConfig:
    """A joint config; either tower may be None for a tower-only checkpoint."""

    text_config: TextConfig | None = field(default_factory=TextConfig)
    vision_config: VisionConfig | None = field(default_factory=VisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    # how two embeddings make a logit, and how logits are compared
    scoring: str = "softmax"     # "softmax" across captions (CLIP); "sigmoid": each pair by itself (SigLIP)
    logit_bias: bool = False     # a learned bias on every logit (SigLIP)
    logit_bias_init_value: float = 0.0
    max_logit_scale: float | None = None  # exp(logit_scale) is clamped at this (AIMv2: 100)

    def __post_init__(self) -> None:
        if self.text_config is None and self.vision_config is None:
            raise ValueError("a CLIPConfig needs a text_config, a vision_config or both")
        _check_choice("scoring", self.scoring, ("softmax", "sigmoid"))
        _check_bool("logit_bias", self.logit_bias)
        if self.max_logit_scale is not None and not (isinstance(self.max_logit_scale, (int, float))
                                                     and not isinstance(self.max_logit_scale, bool)
                                                     and self.max_logit_scale > 0):
            raise ValueError(f"max_logit_scale must be a positive number or None, got {self.max_logit_scale!r}")
        _check_projection_dim(self.projection_dim)
        scale = self.logit_scale_init_value
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"logit_scale_init_value must be a finite number, got {scale!r}")

    # the model_type values of config.json this family reads, and the tower each one holds (None: both)
    model_types = {"clip": None, "clip_vision_model": "vision", "clip_text_model": "text"}
    # what a family changes: its towers' config classes, and transformers' class names (None: the joint model)
    tower_configs = {"text_config": TextConfig, "vision_config": VisionConfig}
    architectures = {None: "CLIPModel", "vision_config": "CLIPVisionModelWithProjection",
                     "text_config": "CLIPTextModelWithProjection"}
    # Every other family: defining a subclass with its own model_types registers it (its module, under
    # clipx/families/, is imported with clipx), so config.json's model_type finds it.
    _families: ClassVar[list[type[CLIPConfig]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_types" in cls.__dict__:
            CLIPConfig._families.append(cls)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        """The config of whichever family config.json's model_type names (CLIP, SigLIP, ...).
        Raises ValueError naming the bad field by its key path ("vision_config.hidden_size")."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object {{...}}, got a {type(d).__name__}")
        model_type = d.get("model_type", "clip")
        families = [CLIPConfig, *CLIPConfig._families]
        for family in families:
            if model_type in family.model_types:
                return family.read(d, family.model_types[model_type])
        known = ", ".join(repr(t) for family in families for t in family.model_types)
        raise ValueError(f"model_type is {model_type!r}; clipx reads {known}")

    @classmethod
    def read(cls, d: dict[str, Any], tower: str | None) -> "CLIPConfig":
        """This family's config from config.json's dict; `tower`: "vision" or "text" for a tower-only one."""
        if tower is not None:
            key = f"{tower}_config"
            one = cls.tower_configs[key].from_dict(cls.tower_dict(d, key))
            return cls(**{k: one if k == key else None for k in cls.tower_configs},
                       projection_dim=d.get("projection_dim", 512))
        projection_dim = d.get("projection_dim", 512)
        _check_projection_dim(projection_dim)  # before the towers, which would name it as their own field
        # the joint value rules; sub-configs carry a stale default
        towers = {key: tower_cls.from_dict({**cls.tower_dict(_sub_config(d, key), key, f"{key}."),
                                            "projection_dim": projection_dim}, where=f"{key}.")
                  for key, tower_cls in cls.tower_configs.items()}
        return cls(**towers, projection_dim=projection_dim,
                   logit_scale_init_value=d.get("logit_scale_init_value", 2.6592), **cls.joint_fields(d))

    @classmethod
    def tower_dict(cls, d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        """config.json's fields of one tower (`key`: "text_config" or "vision_config") under clipx's names
        (`where`: their key path, for errors). CLIP's: transformers' eos_token_id=2 rule for the text."""
        return _eos_pooling(d) if key == "text_config" else d

    @classmethod
    def joint_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """The scoring fields config.json carries (clipx writes them), else the family's own."""
        return {name: d[name] for name in _JOINT_MODES if name in d}

    @classmethod
    def from_json_file(cls, path: str | Path) -> "CLIPConfig":
        try:
            return cls.from_dict(read_json(Path(path)))
        except CheckpointError:
            raise
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def default_processor(self) -> dict[str, Any]:
        """preprocessor_config.json for checkpoints that ship none: the family's recipe at the model's
        size (CLIP's: shortest edge, centre crop, OpenAI's mean and std)."""
        n = self.vision_config.image_size
        return {"size": {"shortest_edge": n}, "crop_size": {"height": n, "width": n}}

    @classmethod
    def layout(cls) -> Layout:
        """How this family's checkpoints name and shape the weights."""
        return CLIP_LAYOUT

    def to_dict(self) -> dict[str, Any]:
        """HF's layout, so transformers loads a folder clipx saved."""
        if self.vision_config is None or self.text_config is None:
            key = "vision_config" if self.vision_config else "text_config"
            return {**getattr(self, key).to_dict(), "architectures": [self.architectures[key]],
                    "projection_dim": self.projection_dim}
        return {
            "architectures": [self.architectures[None]],
            "model_type": next(iter(self.model_types)),
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            **self.joint_modes(),
            "text_config": self.text_config.to_dict(),
            "vision_config": self.vision_config.to_dict(),
        }

    def joint_modes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _JOINT_MODES}

    def save(self, folder: str | Path) -> None:
        """config.json in `folder`, whole or not at all (`clipx.files.replacing`)."""
        write_json(self.to_dict(), Path(folder, "config.json"), indent=2)


def _eos_pooling(d: dict[str, Any]) -> dict[str, Any]:
    """transformers' rule for CLIP text configs: eos_token_id=2 (OpenAI's hub configs carry it, a historical
    mistake) pools at argmax(input_ids), which is the real EOS 49407 as the largest id."""
    if "pooling" not in d and d.get("eos_token_id") == 2:
        return {**d, "pooling": "eos_argmax"}
    return d


def _sub_config(d: dict[str, Any], key: str) -> dict[str, Any]:
    sub = d.get(key) or {}
    if not isinstance(sub, dict):
        raise ValueError(f"{key} must be a JSON object {{...}}, got a {type(sub).__name__}")
    return sub
