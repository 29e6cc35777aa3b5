"""SigLIP 2 NaFlex (Tschannen et al., "SigLIP 2", 2025): the variable-resolution checkpoints, transformers'
`Siglip2Model` (model_type "siglip2"). The fixed-resolution SigLIP 2 checkpoints are SigLIP's (`siglip.py`).

Everything is SigLIP's (blocks, attention-pooling head, last-position text tower, Gemma tokenizer, sigmoid
scoring, the key layout) except how an image enters: the processor resizes each image at its own aspect
ratio to a budget of patches (`preprocess/naflex.py`), a linear patch embedding reads the flattened patches,
the learned square grid of positions (`num_patches` of them) is resized to each image's grid (bilinear,
antialiased), and the padding patches are masked out as keys in every block and in the pooling head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..model.config import TextConfig, VisionConfig
from .siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig


@dataclass
class Siglip2VisionConfig(SiglipVisionConfig):
    image_size: int = 256  # not in config.json: the side, in pixels, of the position grid (sqrt(num_patches) patches)
    patch_embedding: str = "linear"
    position_resize: str = "bilinear_antialias"

    model_type = "siglip2_vision_model"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> Siglip2VisionConfig:
        """config.json's `num_patches` (a square number: the learned positions form a square grid) as the
        grid's size in pixels."""
        num_patches, patch_size = d.get("num_patches", 256), d.get("patch_size", 16)
        grid = math.isqrt(num_patches) if isinstance(num_patches, int) and num_patches > 0 else 0
        if isinstance(num_patches, bool) or grid * grid != num_patches or grid == 0:
            raise ValueError(f"{where}num_patches must be a square number (a grid of learned positions), "
                             f"got {num_patches!r}")
        image_size = grid * patch_size if isinstance(patch_size, int) else patch_size  # a bad patch_size is named below
        return super().from_dict({**d, "image_size": image_size}, where)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        del d["image_size"]
        return {**d, "num_patches": self.grid_size ** 2}


@dataclass
class Siglip2TextConfig(SiglipTextConfig):
    model_type = "siglip2_text_model"


@dataclass
class Siglip2Config(SiglipConfig):
    text_config: TextConfig | None = field(default_factory=Siglip2TextConfig)
    vision_config: VisionConfig | None = field(default_factory=Siglip2VisionConfig)

    model_types = {"siglip2": None, "siglip2_vision_model": "vision", "siglip2_text_model": "text"}
    tower_configs = {"text_config": Siglip2TextConfig, "vision_config": Siglip2VisionConfig}
    architectures = {None: "Siglip2Model", "vision_config": "Siglip2VisionModel", "text_config": "Siglip2TextModel"}

    def default_processor(self) -> dict[str, Any]:
        """NaFlex's recipe at transformers' default budget of 256 patches of the model's size."""
        return {"image_processor_type": "Siglip2ImageProcessor", "patch_size": self.vision_config.patch_size,
                "max_num_patches": 256}
