"""CLIP's byte-level BPE tokenizer through the `tokenizers` library, giving the ids of HF's CLIPTokenizerFast."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from .assets import CLIP_BPE_DIR
from .errors import CheckpointError
from .files import check_readable, is_file, read_json

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_CONTEXT_LENGTH = 77
# CLIP's word split, as transformers' CLIPTokenizer has it: special tokens, contractions, letter runs,
# single digits, runs of anything else but whitespace (which is dropped)
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
_BYTES = decoders.ByteLevel()  # byte-level symbols ("Ã©") back to text ("é")


@dataclass
class Encoding:
    """Token ids and attention mask (LongTensor [T, L], right-padded); also a mapping, so `model(**enc)` works."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.keys():
            raise KeyError(f"{key!r}: an Encoding has {self.keys()}")
        return getattr(self, key)

    def to(self, device: torch.device | str) -> Encoding:
        return Encoding(self.input_ids.to(device), self.attention_mask.to(device))


def _clip_backend(vocab_file: Path, merges_file: Path, bos: str, eos: str, unk: str) -> Backend:
    """The pipeline of transformers' CLIPTokenizer (and its converter) around the BPE files."""
    bpe = _read_backend(partial(BPE.from_file, unk_token=unk, dropout=None, continuing_subword_prefix="",
                                end_of_word_suffix="</w>", fuse_unk=False), vocab_file, merges_file)
    backend = Backend(bpe)
    for name, token in (("bos_token", bos), ("eos_token", eos)):
        if backend.token_to_id(token) is None:
            raise CheckpointError(f"{vocab_file} has no token {token!r} ({name})")
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    # RobertaProcessing is HF's way to get "BOS text EOS" next to a byte-level pre-tokenizer
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=False, add_prefix_space=False)
    return backend


def _read_special_tokens(folder: Path) -> tuple[dict[str, str], int | None]:
    """Special tokens and model_max_length from tokenizer_config.json, overridden by special_tokens_map.json
    (the order transformers reads them in). Tokens may be strings or serialised AddedTokens."""
    tokens, max_length = {}, None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if is_file(folder / name):
            config = read_json(folder / name)
            max_length = config.get("model_max_length", max_length)
            for key in SPECIAL_KEYS:
                value = config.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if value is None:
                    continue
                if not (isinstance(value, str) and value):
                    raise CheckpointError(f"{folder / name}: {key} must be a token string or an object with "
                                          f"one in 'content', got {config.get(key)!r}")
                tokens[key] = value
    return tokens, max_length


def _read_backend(read, *paths: Path) -> Backend:
    """`read(*paths)` through the tokenizers library, whose errors (plain Exceptions) do not name the file."""
    for path in paths:
        check_readable(path)
    try:
        return read(*map(str, paths))
    except Exception as e:  # noqa: BLE001 - the Rust side raises bare Exception for every parse error
        raise CheckpointError(f"{' / '.join(map(str, paths))} is not a valid tokenizer file: {e}") from None


def _shorten(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


class Tokenizer:
    """CLIP's tokenizer: `tok(texts)` -> Encoding of input_ids and attention_mask, padded with `pad_token`."""

    def __init__(self, backend: Backend, context_length: int = DEFAULT_CONTEXT_LENGTH, bos_token: str = BOS,
                 eos_token: str = EOS, pad_token: str = EOS, unk_token: str = EOS):
        if context_length < 2:
            raise ValueError(f"context_length must leave room for BOS and EOS, got {context_length}")
        # transformers registers every special token as an added special token, which also keeps it whole
        # in text (and splits it out of words: a pad token "!" changes how "wow!!" is cut); do the same
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t in dict.fromkeys((bos_token, eos_token, unk_token, pad_token))])
        self._backend = backend
        self.context_length = context_length
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.bos_token_id = backend.token_to_id(bos_token)
        self.eos_token_id = backend.token_to_id(eos_token)
        self.pad_token_id = backend.token_to_id(pad_token)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}

    @classmethod
    def from_pretrained(cls, folder: str | Path, context_length: int | None = None) -> Tokenizer:
        """Load tokenizer.json, else vocab.json + merges.txt, from a folder in the hub's layout.
        context_length: None takes the folder's model_max_length where one is set, else 77."""
        folder = Path(folder)
        tokens, max_length = _read_special_tokens(folder)
        tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS, **tokens}
        if is_file(folder / "tokenizer.json"):
            backend = _read_backend(Backend.from_file, folder / "tokenizer.json")
        elif is_file(folder / "vocab.json") and is_file(folder / "merges.txt"):
            backend = _clip_backend(folder / "vocab.json", folder / "merges.txt",
                                    tokens["bos_token"], tokens["eos_token"], tokens["unk_token"])
        else:
            raise FileNotFoundError(f"no tokenizer files in {folder}: looked for tokenizer.json, "
                                    "or vocab.json together with merges.txt")
        if context_length is None:
            # transformers writes a huge sentinel (1e30) when no length is known
            context_length = max_length if isinstance(max_length, int) and max_length < 1e6 else DEFAULT_CONTEXT_LENGTH
        return cls(backend, context_length, **tokens)

    @classmethod
    def default(cls, context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
        """CLIP's own vocabulary, shipped in assets/clip-bpe (for checkpoints that come without tokenizer files)."""
        return cls.from_pretrained(CLIP_BPE_DIR, context_length)

    def __call__(self, texts: str | list[str], padding: str = "longest", truncation: bool = True) -> Encoding:
        """Tokenize a caption or a list of captions (a str is a batch of one).

        padding: "longest" (the longest caption in the batch) or "max_length" (context_length).
        truncation: cut captions longer than context_length, keeping EOS last, with a warning;
        False raises a ValueError for them instead."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to tokenize: got an empty list")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        # set per call: context_length is a plain attribute the caller may change
        self._backend.enable_truncation(self.context_length)
        self._backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token,
                                     length=self.context_length if padding == "max_length" else None)
        encodings = self._backend.encode_batch(texts)
        too_long = [text for text, e in zip(texts, encodings) if e.overflowing]
        if too_long:
            message = (f"{len(too_long)} of {len(texts)} captions are longer than context_length="
                       f"{self.context_length} tokens (the first: {_shorten(too_long[0])!r})")
            if not truncation:
                raise ValueError(message + "; shorten them or pass truncation=True")
            warnings.warn(message + "; they were truncated, keeping EOS last", stacklevel=2)
        return Encoding(torch.tensor([e.ids for e in encodings], dtype=torch.long),
                        torch.tensor([e.attention_mask for e in encodings], dtype=torch.long))

    def tokens(self, input_ids, attention_mask=None) -> list[list[str]]:
        """Readable strings per position ("café", not "cafÃ©</w>"); special tokens as they are.
        1-D input is one sequence (a list of one row comes back); with attention_mask, padding is left out.
        A token holding part of a character's UTF-8 bytes shows as "\ufffd"."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).reshape(ids.shape)
        return [[self._display(i) for i, keep in zip(row, keep_row) if keep]
                for row, keep_row in zip(ids.tolist(), mask.tolist())]

    def _display(self, token_id: int) -> str:
        token = self._backend.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return token if token_id in self._special_ids else _BYTES.decode([token.removesuffix("</w>")])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """One sequence of ids back to (normalised) text, as CLIPTokenizerFast.decode does."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"decode takes one sequence (1-D ids), got shape {tuple(ids.shape)}")
        text = self._backend.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()  # "</w>" marks where words end

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json (the hub's layout),
        loadable here and by transformers' CLIPTokenizer(Fast)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._backend.no_truncation()  # the per-call settings must not be saved
        self._backend.no_padding()
        self._backend.save(str(folder / "tokenizer.json"))
        self._backend.model.save(str(folder))  # vocab.json + merges.txt, for readers of the slow format
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length,
                  **{key: getattr(self, key) for key in SPECIAL_KEYS}}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
