"""Model configuration, read from and written to Hugging Face's `config.json` layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TowerConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = 512

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TowerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

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

    model_type = "clip_vision_model"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig(TowerConfig):
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    # OpenAI's hub configs say eos_token_id=2 (a historical mistake transformers keeps): pooling then
    # takes argmax(input_ids), which is the real EOS 49407 because it is the largest id.
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    model_type = "clip_text_model"


@dataclass
class CLIPConfig:
    """A joint config; either tower may be None for a tower-only checkpoint."""

    text_config: TextConfig | None = field(default_factory=TextConfig)
    vision_config: VisionConfig | None = field(default_factory=VisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        model_type = d.get("model_type", "clip")
        if model_type == "clip_vision_model":
            return cls(text_config=None, vision_config=VisionConfig.from_dict(d),
                       projection_dim=d.get("projection_dim", 512))
        if model_type == "clip_text_model":
            return cls(text_config=TextConfig.from_dict(d), vision_config=None,
                       projection_dim=d.get("projection_dim", 512))
        if model_type != "clip":
            raise ValueError(f"config.json has model_type {model_type!r}; clipx reads 'clip', "
                             "'clip_vision_model' and 'clip_text_model'")
        projection_dim = d.get("projection_dim", 512)
        towers = {}
        for key, tower_cls in (("text_config", TextConfig), ("vision_config", VisionConfig)):
            sub = dict(d.get(key) or {})
            sub["projection_dim"] = projection_dim  # the joint value rules; sub-configs carry a stale default
            towers[key] = tower_cls.from_dict(sub)
        return cls(**towers, projection_dim=projection_dim,
                   logit_scale_init_value=d.get("logit_scale_init_value", 2.6592))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "CLIPConfig":
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """HF's layout, so transformers loads a folder clipx saved."""
        if self.vision_config is None or self.text_config is None:
            tower = self.vision_config or self.text_config
            arch = "CLIPVisionModelWithProjection" if self.vision_config else "CLIPTextModelWithProjection"
            return {**tower.to_dict(), "architectures": [arch], "projection_dim": self.projection_dim}
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": self.text_config.to_dict(),
            "vision_config": self.vision_config.to_dict(),
        }

    def save(self, folder: str | Path) -> None:
        Path(folder, "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
