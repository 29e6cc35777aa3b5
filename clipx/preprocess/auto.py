"""Which tokenizer a checkpoint folder needs, read from its tokenizer_config.json."""

from __future__ import annotations

from pathlib import Path

from ..files import is_file, read_json
from .sentencepiece import SiglipTokenizer
from .bpe import Tokenizer, gemma_tokenizer, pipeline_tokenizer

# tokenizer classes whose tokenizer.json, as transformers writes it, holds their whole pipeline
COMPLETE_PIPELINES = ("XLMRobertaTokenizer", "BertTokenizer")


def load_tokenizer(folder: str | Path, context_length: int | None = None):
    """The tokenizer of a folder in the hub's layout, by its family: tokenizer_config.json's
    tokenizer_class "SiglipTokenizer" (or a lone spiece.model) is SigLIP's SentencePiece,
    "GemmaTokenizer" / "Siglip2Tokenizer" SigLIP 2's Gemma BPE, those of `COMPLETE_PIPELINES` their
    tokenizer.json as it is, anything else CLIP's BPE.
    context_length: None takes the folder's model_max_length, else 77 (CLIP) or 64 (SigLIP)."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    name = read_json(config_path).get("tokenizer_class") if is_file(config_path) else None
    name = name.removesuffix("Fast") if isinstance(name, str) else None
    if name in ("GemmaTokenizer", "Siglip2Tokenizer"):
        return gemma_tokenizer(folder, name, context_length)
    if name in COMPLETE_PIPELINES:
        return pipeline_tokenizer(folder, name, context_length)
    lone_spiece = name is None and is_file(folder / "spiece.model") and not is_file(folder / "tokenizer.json")
    if name == "SiglipTokenizer" or lone_spiece:
        return SiglipTokenizer.from_pretrained(folder, context_length)
    return Tokenizer.from_pretrained(folder, context_length)
