"""What every text tokenizer shares: the `Encoding` it returns, the checks of its arguments, padding per-caption
ids into one batch, and the special tokens and context length a folder's tokenizer_config.json gives.

SigLIP's text tower runs bidirectionally over all 64 positions and pools the last one, and was trained
with padding as ordinary input: its tokenizers pad every caption to context_length and return an
attention_mask of ones (so `model(**enc)` masks nothing, as transformers' SigLIP usage does). Which
positions hold the caption is in `Encoding.content_mask`, for display.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, caller_level
from ..files import is_file, read_json

DEFAULT_CONTEXT_LENGTH = 77
SIGLIP_CONTEXT_LENGTH = 64  # SigLIP and SigLIP 2 were trained on 64 tokens
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_MARKERS = {"cls_token": "bos_token", "sep_token": "eos_token"}  # read as the BOS / EOS where those are not given


@dataclass
class Encoding:
    """Token ids and attention mask (LongTensor [T, L]); also a mapping of the model's inputs, so
    `model(**enc)` works. content_mask is 1 at the caption's own tokens (specials included) and 0 at
    padding: for display, never a model input (it equals attention_mask except for SigLIP, whose
    model sees padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    content_mask: torch.Tensor | None = None

    def keys(self) -> list[str]:
        return ["input_ids", "attention_mask"]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.keys():
            raise KeyError(f"{key!r}: an Encoding has {self.keys()}")
        return getattr(self, key)

    def to(self, device: torch.device | str) -> Encoding:
        return Encoding(*(None if t is None else t.to(device) for t in (self.input_ids, self.attention_mask,
                                                                          self.content_mask)))


def context_length_or_default(given: int | None, max_length, default: int) -> int:
    if given is not None:
        return given
    # transformers writes a huge sentinel (1e30) when no length is known
    return max_length if isinstance(max_length, int) and max_length < 1e6 else default


def read_special_tokens(folder: Path) -> tuple[dict[str, str], int | None]:
    """Special tokens and model_max_length from tokenizer_config.json, overridden by special_tokens_map.json
    (the order transformers reads them in). Tokens may be strings or serialised AddedTokens. A tokenizer
    that names no BOS / EOS but a CLS / SEP (BERT's) opens and closes captions with those."""
    tokens, max_length = {}, None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if is_file(folder / name):
            config = read_json(folder / name)
            max_length = config.get("model_max_length", max_length)
            for key in (*SPECIAL_KEYS, *_MARKERS):
                value = config.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if value is None:
                    continue
                if not (isinstance(value, str) and value):
                    raise CheckpointError(f"{folder / name}: {key} must be a token string or an object with "
                                          f"one in 'content', got {config.get(key)!r}")
                tokens[key] = value
    for marker, key in _MARKERS.items():
        if marker in tokens:
            tokens.setdefault(key, tokens.pop(marker))
    return tokens, max_length


def _shorten(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def check_texts(texts: str | list[str], words: bool = True) -> list[str]:
    """A caption or a list of captions -> a non-empty list of str; with `words`, each one holding some (an
    empty caption is scored by its start and end tokens alone, the same for every image it meets: a score
    nobody asked for). A tokenizer takes empty ones (words=False): its maker's tests, a neutral caption."""
    if hasattr(texts, "keys"):  # iterated, a mapping of token ids would give its keys as captions
        raise TypeError(f"texts is a mapping with the keys {sorted(map(str, texts.keys()))}, not captions; "
                        "token ids go in as {'input_ids': ..., 'attention_mask': ...} where a function takes them")
    if isinstance(texts, torch.Tensor):
        raise TypeError(f"texts is a tensor {tuple(texts.shape)}, not captions; token ids go in as "
                        "{'input_ids': ..., 'attention_mask': ...} where a function takes them")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts given: got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} {text!r:.40}, not a str")
        if words and not text.strip():
            raise ValueError(f"texts[{i}] is {'empty' if not text else f'only spaces ({text!r})'}: give each "
                             "caption some words")
    return texts


def check_padding(padding: str | None, fixed_length: bool) -> str:
    """padding=None means the family's own: "longest" for CLIP, "max_length" for SigLIP."""
    if padding is None:
        return "max_length" if fixed_length else "longest"
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if fixed_length and padding != "max_length":
        raise ValueError("SigLIP pools the last of context_length positions: its captions are always padded "
                         "to max_length")
    return padding


def batch_encoding(rows: list[list[int]], cut: list[bool], texts: list[str], context_length: int,
                   padding: str, truncation: bool, pad_token_id: int, padding_side: str = "right",
                   pads_are_inputs: bool = False) -> Encoding:
    """Pad per-caption ids (already truncated, `cut` marking which were) into an Encoding; warn about,
    or with truncation=False refuse, captions that were too long."""
    too_long = [text for text, c in zip(texts, cut) if c]
    if too_long:
        message = (f"{len(too_long)} of {len(texts)} captions are longer than context_length="
                   f"{context_length} tokens (the first: {_shorten(too_long[0])!r})")
        if not truncation:
            raise ValueError(message + "; shorten them or pass truncation=True")
        warnings.warn(message + "; they were truncated, keeping EOS last", stacklevel=caller_level())
    length = context_length if padding == "max_length" else max(map(len, rows))
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    content = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        at = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        ids[i, at] = torch.tensor(row, dtype=torch.long)
        content[i, at] = 1
    return Encoding(ids, torch.ones_like(content) if pads_are_inputs else content, content)


def warn_unknown_words(texts: list[str], unknown: list[list[str]], vocab_size: int) -> None:
    """Warn of the words (`unknown[i]`: caption i's) that the vocabulary does not hold, naming them: a small
    vocabulary (the demo models' 590 tokens) spells a word it lacks out in single characters, one with an
    unknown token maps it there; either way the model has likely never seen it, and still scores it."""
    words = list(dict.fromkeys(word for row in unknown for word in row))
    if not words:
        return
    where = [text for text, row in zip(texts, unknown) if row]
    shown = ", ".join(map(repr, words[:10])) + (f" and {len(words) - 10} more" if len(words) > 10 else "")
    more = len(where) - 1
    captions = f"{_shorten(where[0])!r}" + (f" and {more} more caption{'s' * (more > 1)}" if more else "")
    warnings.warn(f"the tokenizer's vocabulary ({vocab_size} tokens) does not hold {shown} (in {captions}): "
                  "the model has likely never seen them (spelled out in pieces of a character or two, or unknown)",
                  UserWarning, stacklevel=caller_level())
