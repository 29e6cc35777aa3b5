"""SigLIP's and SigLIP 2's tokenizers and SigLIP's image processor against transformers.

No machine here reaches the hub, so the reference files are built here: a small SentencePiece unigram
model with SigLIP's special ids (pad 0, </s> 1, <unk> 2) saved by transformers' SiglipTokenizer, and a
small byte-fallback BPE saved by transformers' Siglip2Tokenizer / GemmaTokenizer (SigLIP 2's hub
repositories say GemmaTokenizer; transformers 5 ignores their add_eos_token, and so does clipx).
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from clipx.preprocess.image import ImageProcessor
from clipx.preprocess.sentencepiece import SiglipTokenizer
from clipx.preprocess.bpe import Tokenizer
from clipx.preprocess.auto import load_tokenizer
from clipx.preprocess.text import Encoding
from floats import assert_float32_close
from tokenizer_texts import varied_strings

spm = pytest.importorskip("sentencepiece")
transformers.logging.set_verbosity_error()  # the torchvision fallback notice

# SigLIP's special tokens in captions too: transformers splits them out before the clean-up
TEXTS = ["a cat</s>dog", "</s>", " </s> x", "<unk>", "a<pad>b", "▁▁a", "  lead", "x </s>", "\x00 !!!", "A.B,C"] \
    + varied_strings(1200, seed=1)
CORPUS = varied_strings(3000, seed=2)


def hf_ids(hf_tok, texts, length=64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def assert_matches(tok, hf_tok, texts=TEXTS, length=64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are part of the set
        enc = tok(texts)
    ids, mask = hf_ids(hf_tok, texts, length)
    assert enc.input_ids.shape == (len(texts), length)
    bad = [t for t, a, b in zip(texts, enc.input_ids, ids) if not torch.equal(a, b)]
    assert not bad, bad[:5]
    assert torch.equal(enc.content_mask, mask)  # which positions are the caption: transformers' mask
    assert bool(enc.attention_mask.all())  # what the model is fed: padding included, as SigLIP was trained


# --- SigLIP: SentencePiece ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip-tokenizer")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t.lower() for t in CORPUS), model_writer=model, model_type="unigram",
        vocab_size=500, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", character_coverage=0.995, num_threads=1, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def siglip_hf(siglip_folder):
    return transformers.AutoTokenizer.from_pretrained(siglip_folder)


def test_siglip_matches_hf(siglip_folder, siglip_hf):
    assert type(siglip_hf).__name__ == "SiglipTokenizer"
    tok = load_tokenizer(siglip_folder)
    assert isinstance(tok, SiglipTokenizer) and tok.context_length == 64
    assert (tok.eos_token_id, tok.pad_token_id) == (1, 1)
    assert len(TEXTS) >= 1000
    assert_matches(tok, siglip_hf)


def test_siglip_truncation_and_length(siglip_folder, siglip_hf):
    tok = load_tokenizer(siglip_folder, context_length=16)
    long = ["a photo of a cat " * 20, "short"]
    with pytest.warns(UserWarning, match="1 of 2 captions"):
        enc = tok(long)
    assert enc.input_ids[0, -1].item() == tok.eos_token_id
    assert torch.equal(enc.input_ids, hf_ids(siglip_hf, long, 16)[0])
    with pytest.raises(ValueError, match="longer than context_length"):
        tok(long, truncation=False)
    with pytest.raises(ValueError, match="max_length"):
        tok(long, padding="longest")


def test_siglip_tokens_decode_save(siglip_folder, siglip_hf, tmp_path):
    tok = load_tokenizer(siglip_folder)
    enc = tok(["A photo of a cat!", "dogs"])
    shown = tok.tokens(enc.input_ids, enc.content_mask)
    assert "".join(shown[0][:-1]) == " a photo of a cat" and shown[0][-1] == "</s>"
    assert tok.tokens(enc.input_ids)[1][-1] == "</s>"  # padding shown where no mask is given
    for text in ["A photo of a cat!", "Café au lait, s'il vous plaît", ""]:
        ids = tok(text).input_ids[0]
        assert tok.decode(ids) == siglip_hf.decode(ids.tolist(), skip_special_tokens=True)
    tok.save_pretrained(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), SiglipTokenizer)
    assert_matches(tok, transformers.AutoTokenizer.from_pretrained(tmp_path), TEXTS[:300])


def test_siglip_names_words_with_an_unknown_piece(siglip_folder):
    tok = load_tokenizer(siglip_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # words the vocabulary holds, however split
        tok(["a photo of a cat", "Café au lait"])
    with pytest.warns(UserWarning, match=r"\(500 tokens\) does not hold 'a☃b' \(in 'A☃B cat'\)") as record:
        enc = tok(["a cat", "A☃B cat"])
    assert record[0].filename == __file__
    assert 2 in enc.input_ids[1].tolist()  # SigLIP's <unk>, id 2: the snowman is no piece of this model


def test_siglip_needs_spiece_model(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    with pytest.raises(FileNotFoundError, match=f"spiece.model in .*{tmp_path.name}"):
        load_tokenizer(tmp_path)


# --- SigLIP 2: Gemma BPE ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_backend():
    """A small Gemma-shaped BPE: "▁" for spaces, byte fallback, Gemma's special ids."""
    backend = Backend(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials + bytes_, show_progress=False)
    backend.train_from_iterator([t.replace(" ", "▁") for t in CORPUS], trainer)
    return backend


def save_gemma(folder, backend, tokenizer_class, **config):
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": tokenizer_class, "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
              "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 64, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("tokenizer_class, config", [
    ("GemmaTokenizer", {"add_bos_token": False, "add_eos_token": True, "padding_side": "right"}),  # the hub's
    ("Siglip2Tokenizer", {"add_bos_token": False, "add_eos_token": True}),  # lowercases; pads left by default
    ("GemmaTokenizerFast", {}),  # no specials added, no side given
])
def test_siglip2_matches_hf(gemma_backend, tmp_path, tokenizer_class, config):
    folder = save_gemma(tmp_path / "src", gemma_backend, tokenizer_class, **config)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    tok = load_tokenizer(folder)
    assert isinstance(tok, Tokenizer) and tok.fixed_length and tok.padding_side == hf.padding_side
    assert tok.pad_token_id == hf.pad_token_id == 0
    assert_matches(tok, hf)
    ids = tok("Café, 東京 🐱!").input_ids[0]
    assert tok.decode(ids) == hf.decode(ids.tolist(), skip_special_tokens=True)
    tok.save_pretrained(tmp_path / "saved")
    assert_matches(tok, transformers.AutoTokenizer.from_pretrained(tmp_path / "saved"), TEXTS[:300])
    assert_matches(load_tokenizer(tmp_path / "saved"), hf, TEXTS[:300])


def test_siglip2_tokens_are_readable(gemma_backend, tmp_path):
    tok = load_tokenizer(save_gemma(tmp_path, gemma_backend, "GemmaTokenizer", padding_side="right"))
    enc = tok("a photo of a cat, 東京")
    assert "".join(tok.tokens(enc.input_ids, enc.content_mask)[0]) == "a photo of a cat, 東京"


def test_encoding_feeds_only_model_inputs(siglip_folder):
    enc = load_tokenizer(siglip_folder)(["a cat", "a dog on a mat"])
    assert isinstance(enc, Encoding) and dict(**enc).keys() == {"input_ids", "attention_mask"}
    moved = enc.to("cpu")
    assert torch.equal(moved.content_mask, enc.content_mask)


# --- SigLIP's image processor ---------------------------------------------------------------------
SIGLIP_CONFIG = {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 40},
                 "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@pytest.mark.parametrize("config", [SIGLIP_CONFIG, {"image_processor_type": "SiglipImageProcessor"}])
def test_siglip_image_processor_matches_hf(tmp_path, config):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    ours = ImageProcessor.from_pretrained(tmp_path)
    hf = transformers.SiglipImageProcessorPil.from_pretrained(tmp_path)
    assert not ours.do_center_crop and ours.value_range() == (-1.0, 1.0)
    rng = np.random.default_rng(0)
    for (w, h), mode in [((224, 224), "RGB"), ((301, 97), "RGB"), ((97, 301), "RGB"), ((50, 50), "RGBA"),
                         ((33, 65), "L"), ((640, 480), "LA"), ((1, 7), "RGB")]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
        expected = hf(image, return_tensors="pt").pixel_values.float()
        assert_float32_close(ours(image), expected, what=f"{w}x{h} {mode}")
        assert ours.crop_box(w, h) == (0, 0, w, h)  # resized whole: the model sees all of the image
    image = Image.fromarray(rng.integers(0, 256, (ours.size["height"], ours.size["width"], 3), dtype=np.uint8))
    assert np.array_equal(np.array(ours.to_pil(ours(image))[0]), np.array(image))


def test_siglip_image_processor_save_round_trip(tmp_path):
    ours = ImageProcessor.from_dict(SIGLIP_CONFIG)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SiglipImageProcessor" and "crop_size" not in saved
    hf = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(hf).__name__.startswith("SiglipImageProcessor")
    assert ImageProcessor.from_pretrained(tmp_path) == ours
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    assert_float32_close(ours(image), hf(image, return_tensors="pt").pixel_values.float())
