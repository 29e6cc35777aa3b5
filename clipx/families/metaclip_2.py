"""The MetaCLIP 2 family (Chuang et al., "Meta CLIP 2: A Worldwide Scaling Recipe", 2025), as
transformers' `MetaClip2Model` has it.

The architecture and the weights' names are CLIP's. What differs is the text: XLM-R's SentencePiece
vocabulary (`<s>` 0, `<pad>` 1, `</s>` 2), so a caption is pooled at its first `</s>` by id. CLIP's
readers take eos_token_id=2 for OpenAI's historical mistake and pool at the largest id instead
(`pooling="eos_argmax"`); here 2 is the real EOS, so that rule must not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model.config import CLIPConfig, TextConfig, VisionConfig, _sub_config


@dataclass
class MetaClip2VisionConfig(VisionConfig):
    model_type = "metaclip_2_vision_model"


@dataclass
class MetaClip2TextConfig(TextConfig):
    # XLM-R's special tokens
    bos_token_id: int = 0
    eos_token_id: int = 2
    pad_token_id: int = 1

    model_type = "metaclip_2_text_model"


def _pooled_at_eos(d: dict[str, Any]) -> dict[str, Any]:
    """A text config that pools at its first eos_token_id, whatever that id is, unless it says otherwise."""
    return {"pooling": "eos", **d}


@dataclass
class MetaClip2Config(CLIPConfig):
    text_config: TextConfig | None = field(default_factory=MetaClip2TextConfig)
    vision_config: VisionConfig | None = field(default_factory=MetaClip2VisionConfig)

    model_types = {"metaclip_2": None, "metaclip_2_vision_model": "vision", "metaclip_2_text_model": "text"}

    @classmethod
    def read(cls, d: dict[str, Any], tower: str | None) -> MetaClip2Config:
        """CLIP's reading, with the text pooled by id (CLIP's eos_token_id=2 rule left out)."""
        if tower == "text":
            d = _pooled_at_eos(d)
        elif tower is None:
            d = {**d, "text_config": _pooled_at_eos(_sub_config(d, "text_config"))}
        config = super().read(d, tower)
        # the towers as this family's, so they write back their own model_type
        for key, tower_cls in (("text_config", MetaClip2TextConfig), ("vision_config", MetaClip2VisionConfig)):
            one = getattr(config, key)
            if one is not None:
                setattr(config, key, tower_cls(**vars(one)))
        return config

    def to_dict(self) -> dict[str, Any]:
        """transformers' MetaClip2Config layout: CLIP's, under this family's names."""
        d = super().to_dict()
        if d.get("model_type") == "clip":
            d["model_type"] = "metaclip_2"
        d["architectures"] = [name.replace("CLIP", "MetaClip2") for name in d["architectures"]]
        return d
