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

from ..model.config import CLIPConfig, TextConfig, VisionConfig


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


@dataclass
class MetaClip2Config(CLIPConfig):
    text_config: TextConfig | None = field(default_factory=MetaClip2TextConfig)
    vision_config: VisionConfig | None = field(default_factory=MetaClip2VisionConfig)

    model_types = {"metaclip_2": None, "metaclip_2_vision_model": "vision", "metaclip_2_text_model": "text"}
    tower_configs = {"text_config": MetaClip2TextConfig, "vision_config": MetaClip2VisionConfig}
    architectures = {None: "MetaClip2Model", "vision_config": "MetaClip2VisionModelWithProjection",
                     "text_config": "MetaClip2TextModelWithProjection"}

    @classmethod
    def tower_dict(cls, d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        """CLIP's reading, with the text pooled at its first eos_token_id, whatever that id is, unless the
        config says otherwise (CLIP's eos_token_id=2 rule left out)."""
        return {"pooling": "eos", **d} if key == "text_config" else d
