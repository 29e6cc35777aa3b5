"""SigLIP's tokenizer: a SentencePiece model (spiece.model) read with the `sentencepiece` package,
giving the ids of transformers' SiglipTokenizer.

Its recipe, as transformers runs it: prefix the caption with "▁" (a literal "▁" in it becomes a space),
split out the special tokens (whitespace next to them dropped), and for each other piece lowercase,
drop every ASCII punctuation mark, collapse whitespace runs to one space and strip; then encode
(after an "<unk>" that is cut off again, so SentencePiece's own prefix lands on it), append EOS
unless the ids already end with one, and pad to context_length with the pad token.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..extras import require
from ..files import check_readable, is_file, make_folder, read_json, write_bytes, write_json
from .text import (SIGLIP_CONTEXT_LENGTH, batch_encoding, check_padding, check_texts, context_length_or_default,
                   read_special_tokens, warn_unknown_words)

SPIECE = "spiece.model"
UNDERLINE = "▁"  # SentencePiece's word-boundary mark
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _sentencepiece():
    return require("sentencepiece", "SigLIP's tokenizer (it reads spiece.model)", "siglip")


class SiglipTokenizer:
    """SigLIP's SentencePiece tokenizer: `tok(texts)` -> Encoding padded to context_length.

    The model sees the padding (attention_mask is all ones, as SigLIP was trained);
    Encoding.content_mask marks the caption's own tokens."""

    fixed_length = True
    padding_side = "right"

    def __init__(self, model_file: str | Path, context_length: int = SIGLIP_CONTEXT_LENGTH, eos_token: str = "</s>",
                 pad_token: str = "</s>", unk_token: str = "<unk>", do_lower_case: bool = True,
                 added_tokens: dict[int, str] | None = None):
        if context_length < 1:
            raise ValueError(f"context_length must leave room for EOS, got {context_length}")
        self.model_file = Path(model_file)
        check_readable(self.model_file)
        self._sp = _sentencepiece().SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{self.model_file} is not a valid SentencePiece model: {e}") from None
        self.context_length, self.do_lower_case = context_length, do_lower_case
        self.eos_token, self.pad_token, self.unk_token = eos_token, pad_token, unk_token
        # special tokens are kept whole in text; those beyond the SentencePiece vocabulary come with ids
        self._special = {t: self._sp.piece_to_id(t) for t in (eos_token, pad_token, unk_token)}
        self._special.update({t: i for i, t in (added_tokens or {}).items()})
        for token, i in self._special.items():
            if i < self._sp.get_piece_size() and self._sp.id_to_piece(i) != token:
                raise CheckpointError(f"{self.model_file} has no piece {token!r}")
        self._id_to_special = {i: t for t, i in self._special.items()}
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self._special, key=len, reverse=True))) + ")")
        self.eos_token_id, self.pad_token_id = self._special[eos_token], self._special[pad_token]
        self.vocab_size = max(self._sp.get_piece_size(), max(self._special.values()) + 1)
        self._unk_pieces = len(self._sp.encode(unk_token))

    @classmethod
    def from_pretrained(cls, folder: str | Path, context_length: int | None = None) -> SiglipTokenizer:
        """spiece.model and tokenizer_config.json (special tokens, do_lower_case, model_max_length)."""
        folder = Path(folder)
        if not is_file(folder / SPIECE):
            raise FileNotFoundError(f"no {SPIECE} in {folder}: SigLIP's tokenizer is a SentencePiece model")
        tokens, max_length = read_special_tokens(folder)
        tokens.pop("bos_token", None)  # SigLIP has none
        config_path = folder / "tokenizer_config.json"
        config = read_json(config_path) if is_file(config_path) else {}
        added = config.get("added_tokens_decoder") or {}
        try:
            added = {int(i): t["content"] if isinstance(t, dict) else t for i, t in added.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise CheckpointError(f"{config_path}: added_tokens_decoder must map ids to tokens") from None
        return cls(folder / SPIECE, context_length_or_default(context_length, max_length, SIGLIP_CONTEXT_LENGTH), **tokens,
                   do_lower_case=bool(config.get("do_lower_case", True)), added_tokens=added)

    def _canonical(self, text: str) -> str:
        """big_vision's caption clean-up, which SigLIP was trained on."""
        text = text.lower() if self.do_lower_case else text
        return re.sub(r"\s+", " ", text.translate(_NO_PUNCTUATION)).strip()

    def _ids(self, text: str) -> list[int]:
        """A caption's ids before EOS."""
        parts = self._split.split(UNDERLINE + text.replace(UNDERLINE, " "))  # odd indices: special tokens
        for i in range(1, len(parts), 2):  # whitespace next to a special token is dropped
            parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
        ids = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._special[part])
            elif part:
                ids += self._sp.encode(self.unk_token + self._canonical(part))[self._unk_pieces:]
            # a caption that starts with a special token loses the lone "▁" before it
            if i == 0 and len(parts) > 1 and self._sp.id_to_piece(ids) == [UNDERLINE]:
                ids = []
        return ids

    def __call__(self, texts: str | list[str], padding: str | None = None, truncation: bool = True):
        """Tokenize a caption or a list of captions (a str is a batch of one), padded to context_length.
        truncation: cut captions longer than context_length, keeping EOS last, with a warning;
        False raises a ValueError for them instead."""
        texts = check_texts(texts, words=False)
        padding = check_padding(padding, fixed_length=True)
        rows, cut = [], []
        for text in texts:
            ids = self._ids(text)
            cut.append(len(ids) + 1 > self.context_length)
            ids = ids[:self.context_length - 1]
            rows.append(ids if ids and ids[-1] == self.eos_token_id else ids + [self.eos_token_id])
        warn_unknown_words(texts, [self._unknown_words(t, row) for t, row in zip(texts, rows)], self.vocab_size)
        return batch_encoding(rows, cut, texts, self.context_length, padding, truncation, self.pad_token_id,
                              pads_are_inputs=True)

    def _unknown_words(self, text: str, ids: list[int]) -> list[str]:
        """The words of `text` that SentencePiece maps (in part) to its unknown piece; [] at once for a caption
        without one."""
        unk = self._sp.unk_id()
        if unk not in ids:
            return []
        return [word for word in self._canonical(text).split() if unk in self._sp.encode(word)]

    def _piece(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return self._id_to_special.get(token_id) or self._sp.id_to_piece(token_id)

    def tokens(self, input_ids, attention_mask=None) -> list[list[str]]:
        """Readable pieces per position: "▁" shows as the space it stands for (" cat" starts a word,
        "s" continues one); special tokens as they are. 1-D input is one sequence; positions where
        attention_mask (pass Encoding.content_mask) is 0 are left out."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).reshape(ids.shape)
        return [[self._piece(i) if i in self._id_to_special else self._piece(i).replace(UNDERLINE, " ")
                 for i, keep in zip(row, keep_row) if keep] for row, keep_row in zip(ids.tolist(), mask.tolist())]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """One sequence of ids back to (canonical) text; special tokens, unless skipped, stay as they are."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"decode takes one sequence (1-D ids), got shape {tuple(ids.shape)}")
        if skip_special_tokens:
            return self._sp.decode([i for i in ids.tolist() if self._piece(i) and i not in self._id_to_special])
        out, run = [], []
        for i in ids.tolist():
            self._piece(i)  # range check
            if i not in self._id_to_special:
                run.append(i)
                continue
            out.append(self._sp.decode(run))
            run = []
            if not skip_special_tokens:
                out.append(self._id_to_special[i])
        out.append(self._sp.decode(run))
        return " ".join(part for part in out if part)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write spiece.model and tokenizer_config.json, which transformers' AutoTokenizer loads as a
        SiglipTokenizer; each whole or not at all (`clipx.files.replacing`)."""
        folder = Path(folder)
        make_folder(folder)
        write_bytes(self._sp.serialized_model_proto(), folder / SPIECE)
        config = {"tokenizer_class": "SiglipTokenizer", "model_max_length": self.context_length,
                  "do_lower_case": self.do_lower_case, "eos_token": self.eos_token, "pad_token": self.pad_token,
                  "unk_token": self.unk_token}
        write_json(config, folder / "tokenizer_config.json", indent=2)

    def __repr__(self) -> str:
        return f"SiglipTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
