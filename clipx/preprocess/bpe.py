"""Tokenizers through the `tokenizers` library: CLIP's byte-level BPE (the ids of transformers'
CLIPTokenizerFast), SigLIP 2's Gemma BPE (GemmaTokenizer / Siglip2Tokenizer), and any tokenizer.json
whose pipeline is complete, read as it is (XLM-R's SentencePiece Unigram, BERT's WordPiece)."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, Unigram

from ..assets import CLIP_BPE_DIR
from ..errors import CheckpointError
from ..files import (check_readable, is_file, library_write, make_folder, read_json, replacing, write_bytes,
                     write_json)
from .text import (DEFAULT_CONTEXT_LENGTH, SIGLIP_CONTEXT_LENGTH, SPECIAL_KEYS, Encoding, batch_encoding,
                   check_padding, check_texts, context_length_or_default, read_special_tokens, warn_unknown_words)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's word split, as transformers' CLIPTokenizer has it: special tokens, contractions, letter runs,
# single digits, runs of anything else but whitespace (which is dropped)
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_BYTES = decoders.ByteLevel()  # byte-level symbols ("Ã©") back to text ("é")


def _clip_backend(vocab_file: Path, merges_file: Path, bos: str, eos: str, unk: str) -> Backend:
    """The pipeline of transformers' CLIPTokenizer (and its converter) around the BPE files."""
    bpe = read_backend(partial(BPE.from_file, unk_token=unk, dropout=None, continuing_subword_prefix="",
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


def gemma_tokenizer(folder: Path, tokenizer_class: str, context_length: int | None) -> Tokenizer:
    """SigLIP 2's tokenizer: Gemma's BPE from tokenizer.json, in the pipeline transformers' GemmaTokenizer
    and Siglip2Tokenizer rebuild around the file's vocabulary and merges (they ignore its normalizer);
    Siglip2Tokenizer lowercases first."""
    path = folder / "tokenizer.json"
    if not is_file(path):
        raise FileNotFoundError(f"{folder}: a {tokenizer_class} folder needs tokenizer.json")
    backend = read_backend(Backend.from_file, path)
    if not isinstance(backend.model, BPE):
        raise CheckpointError(f"{path}: a {tokenizer_class} needs a BPE model, got {type(backend.model).__name__}")
    config = read_json(folder / "tokenizer_config.json")
    tokens, max_length = read_special_tokens(folder)
    tokens = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", **tokens}
    backend.model.fuse_unk, backend.model.byte_fallback, backend.model.dropout = True, True, None
    backend.model.unk_token = tokens["unk_token"]
    spaces = normalizers.Replace(" ", "▁")
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), spaces]) \
        if tokenizer_class.startswith("Siglip2") else spaces
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # the file's post-processor decides BOS / EOS: transformers 5 drops the config's add_bos_token /
    # add_eos_token for these classes (SigLIP 2's hub configs say add_eos_token: true, to no effect)
    # transformers' order: the config, the padding saved in tokenizer.json, the class's own (left)
    padding_side = config.get("padding_side") or (backend.padding or {}).get("direction") or "left"
    return Tokenizer(backend, context_length_or_default(context_length, max_length, SIGLIP_CONTEXT_LENGTH), **tokens,
                     fixed_length=True, padding_side=padding_side, tokenizer_class=tokenizer_class)


def pipeline_tokenizer(folder: Path, tokenizer_class: str, context_length: int | None) -> Tokenizer:
    """A tokenizer.json whose pipeline is complete (normaliser, pre-tokenizer, model, and a post-processor
    that adds the special tokens), as transformers writes it for `tokenizer_class`: read as it is, with
    tokenizer_config.json's special tokens, padding side and model_max_length."""
    path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not is_file(path):
        raise FileNotFoundError(f"{folder}: a {tokenizer_class} folder needs tokenizer.json")
    backend = read_backend(Backend.from_file, path)
    if isinstance(backend.model, Unigram):
        # transformers builds the Unigram model from the file's vocabulary; built so, the lattice breaks
        # ties between equally likely segmentations ("xxxx" as two "xx" or four "x") its way
        model = read_json(path)["model"]
        backend.model = Unigram([tuple(piece) for piece in model["vocab"]], model.get("unk_id"),
                                model.get("byte_fallback", False))
    config = read_json(config_path)
    tokens, max_length = read_special_tokens(folder)
    missing = [key for key in SPECIAL_KEYS if key not in tokens]
    if missing:
        raise CheckpointError(f"{config_path} names no {' / '.join(missing)}: a {tokenizer_class} needs them "
                              "to pad and to mark where captions end")
    return Tokenizer(backend, context_length_or_default(context_length, max_length, DEFAULT_CONTEXT_LENGTH),
                     **tokens, padding_side=config.get("padding_side") or "right", tokenizer_class=tokenizer_class,
                     source_config=config)


def read_backend(read, *paths: Path) -> Backend:
    """`read(*paths)` through the tokenizers library, whose errors (plain Exceptions) do not name the file."""
    for path in paths:
        check_readable(path)
    try:
        return read(*map(str, paths))
    except Exception as e:  # noqa: BLE001 - the Rust side raises bare Exception for every parse error
        raise CheckpointError(f"{' / '.join(map(str, paths))} is not a valid tokenizer file: {e}") from None


class Tokenizer:
    """A tokenizer on the `tokenizers` library: `tok(texts)` -> Encoding, padded with `pad_token`.

    CLIP's by default. fixed_length (SigLIP 2): every caption is padded to context_length on
    `padding_side` and the padding is model input (attention_mask all ones)."""

    def __init__(self, backend: Backend, context_length: int = DEFAULT_CONTEXT_LENGTH, bos_token: str = BOS,
                 eos_token: str = EOS, pad_token: str = EOS, unk_token: str = EOS, *, fixed_length: bool = False,
                 padding_side: str = "right", tokenizer_class: str = "CLIPTokenizer",
                 source_config: dict | None = None):
        if context_length < 2:
            raise ValueError(f"context_length must leave room for BOS and EOS, got {context_length}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
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
        self.fixed_length, self.padding_side, self.tokenizer_class = fixed_length, padding_side, tokenizer_class
        # the tokenizer_config.json it was read from, written back whole: transformers rebuilds some classes'
        # pipelines from its settings (BERT's do_lower_case) rather than from tokenizer.json
        self._source_config = source_config
        self._special_ids = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        # an unknown token of its own marks words the vocabulary lacks (CLIP's is EOS, which no word becomes)
        self._unk_id = None if unk_token in (bos_token, eos_token, pad_token) else backend.token_to_id(unk_token)

    @classmethod
    def from_pretrained(cls, folder: str | Path, context_length: int | None = None) -> Tokenizer:
        """Load CLIP's tokenizer.json, else vocab.json + merges.txt, from a folder in the hub's layout.
        context_length: None takes the folder's model_max_length where one is set, else 77.
        (`load_tokenizer` also reads the SigLIP families.)"""
        folder = Path(folder)
        tokens, max_length = read_special_tokens(folder)
        tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS, **tokens}
        if is_file(folder / "tokenizer.json"):
            backend = read_backend(Backend.from_file, folder / "tokenizer.json")
        elif is_file(folder / "vocab.json") and is_file(folder / "merges.txt"):
            backend = _clip_backend(folder / "vocab.json", folder / "merges.txt",
                                    tokens["bos_token"], tokens["eos_token"], tokens["unk_token"])
        else:
            raise FileNotFoundError(f"no tokenizer files in {folder}: looked for tokenizer.json, "
                                    "or vocab.json together with merges.txt")
        return cls(backend, context_length_or_default(context_length, max_length, DEFAULT_CONTEXT_LENGTH), **tokens)

    @classmethod
    def default(cls, context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
        """CLIP's own vocabulary, shipped in clipx/data/clip-bpe (for checkpoints that come without tokenizer files)."""
        return cls.from_pretrained(CLIP_BPE_DIR, context_length)

    def __call__(self, texts: str | list[str], padding: str | None = None, truncation: bool = True) -> Encoding:
        """Tokenize a caption or a list of captions (a str is a batch of one).

        padding: "longest" (the longest caption in the batch) or "max_length" (context_length); None is
        the family's own ("longest" for CLIP; SigLIP allows only "max_length").
        truncation: cut captions longer than context_length, keeping EOS last, with a warning;
        False raises a ValueError for them instead."""
        texts = check_texts(texts, words=False)
        padding = check_padding(padding, self.fixed_length)
        # set per call: context_length is a plain attribute the caller may change
        self._backend.enable_truncation(self.context_length)
        self._backend.no_padding()  # padded here (a tokenizer.json may bring its own padding settings)
        encodings = self._backend.encode_batch(texts)
        warn_unknown_words(texts, [self._unknown_words(t, e) for t, e in zip(texts, encodings)], self.vocab_size)
        return batch_encoding([e.ids for e in encodings], [bool(e.overflowing) for e in encodings], texts,
                              self.context_length, padding, truncation, self.pad_token_id, self.padding_side,
                              pads_are_inputs=self.fixed_length)

    def _unknown_words(self, text: str, encoding) -> list[str]:
        """The words of `text` the vocabulary lacks: those with an unknown token among their pieces, and in
        CLIP's BPE those spelled out, in pieces of under two characters on average (the demo's "kitten":
        k-it-t-en; a word CLIP's vocabulary lacks splits into longer pieces, "photograph-ing", and other
        tokenizers may split, say, Chinese into characters on purpose)."""
        pieces: dict[int, list[tuple[tuple[int, int], int]]] = {}
        for word, span, token in zip(encoding.word_ids, encoding.offsets, encoding.ids):
            if word is not None:
                pieces.setdefault(word, []).append((span, token))
        unknown = []
        for word in pieces.values():
            spans, ids = [span for span, _ in word], [token for _, token in word]
            spelled_out = (self.tokenizer_class == "CLIPTokenizer" and len(ids) > 1
                           and spans[-1][1] - spans[0][0] < 2 * len(ids))
            # the unknown token typed as such ("<unk>") is the token itself, not a word it stands for
            unk = any(token == self._unk_id and text[start:end] != self.unk_token for (start, end), token in word)
            if spelled_out or unk:
                unknown.append(text[spans[0][0]:spans[-1][1]])
        return unknown

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
        if token_id in self._special_ids:
            return token
        if self.tokenizer_class == "CLIPTokenizer":
            return _BYTES.decode([token.removesuffix("</w>")])
        if isinstance(self._backend.decoder, decoders.Metaspace):  # SentencePiece: "▁cat" -> " cat"
            return token.replace(self._backend.decoder.replacement, " ")
        return self._backend.decode([token_id])  # Gemma: "▁cat" -> " cat", a lone byte "<0xE6>" -> "\ufffd"

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """One sequence of ids back to (normalised) text, as transformers' decode does."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"decode takes one sequence (1-D ids), got shape {tuple(ids.shape)}")
        text = self._backend.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)
        if self.tokenizer_class != "CLIPTokenizer":
            return text
        return text.replace("</w>", " ").strip()  # "</w>" marks where words end

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (and for CLIP vocab.json + merges.txt), the hub's
        layout, loadable here and by transformers' AutoTokenizer; each file whole or not at all
        (`clipx.files.replacing`)."""
        folder = Path(folder)
        make_folder(folder)
        self._backend.no_truncation()  # the per-call settings must not be saved
        self._backend.no_padding()
        with replacing(folder / "tokenizer.json") as temp:
            library_write(lambda: self._backend.save(str(temp)), folder / "tokenizer.json")
        if self.tokenizer_class == "CLIPTokenizer":  # vocab.json + merges.txt, for readers of the slow format
            with tempfile.TemporaryDirectory() as scratch:  # the BPE model names its files itself: made aside
                library_write(lambda: self._backend.model.save(scratch), folder)
                for name in ("vocab.json", "merges.txt"):
                    write_bytes((Path(scratch) / name).read_bytes(), folder / name)
        config = self._source_config or {"tokenizer_class": self.tokenizer_class,
                                         **{key: getattr(self, key) for key in SPECIAL_KEYS}}
        config = {**config, "model_max_length": self.context_length}
        if self.fixed_length:  # SigLIP 2's side, which its class would otherwise default to left
            config["padding_side"] = self.padding_side
        write_json(config, folder / "tokenizer_config.json", indent=2)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
