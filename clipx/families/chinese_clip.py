"""The Chinese-CLIP family (Yang et al., "Chinese CLIP: Contrastive Vision-Language Pretraining in
Chinese", 2022), as transformers' `ChineseCLIPModel` has it.

The vision tower is CLIP's. The text tower is BERT: post-norm blocks (`norm(x + f(x))`), a LayerNorm on
the word + token-type + position embeddings, exact (erf) GELU, eps 1e-12, bidirectional, no final norm,
the caption read at its first position ([CLS]) through a projection without bias. Its weights carry
BERT's names (`encoder.layer.N.attention.self.query`, `intermediate.dense`, `output.LayerNorm`), which
this family's `Layout` gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..model.config import CLIPConfig, TextConfig, VisionConfig
from ..model.layout import Layout
from ..model.layout import hf_key as clip_hf_key

# clipx's names in a text block -> BERT's, under text_model.encoder.layer.N.
_BERT_BLOCK = {
    "attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value", "attn.out_proj": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",  # post-norm: the norm after the attention's residual sum
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
    "ln2": "output.LayerNorm",            # and the one after the MLP's
}
_BERT_EMBEDDINGS = {
    "token_embedding": "word_embeddings", "position_embedding": "position_embeddings",
    "token_type_embedding": "token_type_embeddings", "ln_embed": "LayerNorm",
}
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class ChineseCLIPVisionConfig(VisionConfig):
    model_type = "chinese_clip_vision_model"


@dataclass
class ChineseCLIPTextConfig(TextConfig):
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    vocab_size: int = 21128               # bert-base-chinese's
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    # bert-base-chinese's [CLS] / [SEP] / [PAD]: not read by the model, which pools position 0
    bos_token_id: int = 101
    eos_token_id: int = 102
    pad_token_id: int = 0
    norm_position: str = "post"
    causal: bool = False
    pooling: str = "first"
    final_norm: bool = False
    embedding_norm: bool = True
    type_vocab_size: int = 2

    model_type = "chinese_clip_text_model"


@dataclass
class ChineseCLIPConfig(CLIPConfig):
    text_config: TextConfig | None = field(default_factory=ChineseCLIPTextConfig)
    vision_config: VisionConfig | None = field(default_factory=ChineseCLIPVisionConfig)

    model_types = {"chinese_clip": None, "chinese_clip_vision_model": "vision", "chinese_clip_text_model": "text"}
    tower_configs = {"text_config": ChineseCLIPTextConfig, "vision_config": ChineseCLIPVisionConfig}
    architectures = {None: "ChineseCLIPModel", "vision_config": "ChineseCLIPVisionModel",
                     "text_config": "ChineseCLIPTextModel"}

    @classmethod
    def read(cls, d: dict[str, Any], tower: str | None) -> ChineseCLIPConfig:
        if tower == "text":
            raise ValueError("a ChineseCLIPTextModel checkpoint is BERT with its own pooler (dense + tanh), which "
                             "is no part of Chinese-CLIP's text embedding (the [CLS] state through "
                             "text_projection): clipx reads the text tower from a whole ChineseCLIPModel")
        return super().read(d, tower)

    @classmethod
    def tower_dict(cls, d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
        """config.json's tower fields as clipx's: transformers writes token ids it does not use as null."""
        return {k: v for k, v in d.items() if not (k in _TOKEN_IDS and v is None)}

    @classmethod
    def layout(cls) -> Layout:
        return LAYOUT


def hf_key(key: str) -> str:
    """The Hugging Face `ChineseCLIPModel` name of a clipx state-dict key: BERT's for the text tower's
    embeddings and blocks, CLIP's for everything else."""
    match = re.fullmatch(r"text\.blocks\.(\d+)\.(\w+(?:\.\w+_proj|\.fc\d)?)\.(weight|bias)", key)
    if match and match.group(2) in _BERT_BLOCK:
        i, module, kind = match.groups()
        return f"text_model.encoder.layer.{i}.{_BERT_BLOCK[module]}.{kind}"
    tower, _, rest = key.partition(".")
    head, _, tail = rest.partition(".")
    if tower == "text" and head in _BERT_EMBEDDINGS:
        return f"text_model.embeddings.{_BERT_EMBEDDINGS[head]}.{tail}"
    return clip_hf_key(key)


# ChineseCLIPVisionModel (no projection) is saved without its prefix, as CLIP's bare towers
LAYOUT = Layout(hf_key=hf_key)
