"""clipx's Tokenizer against transformers' CLIPTokenizerFast, on the shipped CLIP vocabulary."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
import transformers

from clipx.assets import CLIP_BPE_DIR
from clipx.preprocess.bpe import Tokenizer
from clipx.preprocess.text import Encoding
from tokenizer_texts import varied_strings

TEXTS = varied_strings()


@pytest.fixture(scope="module")
def hf():
    return transformers.CLIPTokenizerFast.from_pretrained(CLIP_BPE_DIR)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


def hf_encode(hf_tok, texts):
    out = hf_tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    return out.input_ids, out.attention_mask


def assert_matches_hf(tokenizer: Tokenizer, hf_tok, texts=TEXTS, batch: int = 200):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long captions are part of the set
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
            ids, mask = hf_encode(hf_tok, chunk)
            enc = tokenizer(chunk)
            assert torch.equal(enc.input_ids, ids), chunk
            assert torch.equal(enc.attention_mask, mask), chunk


def test_known_ids(hf, tok):
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert hf("a photo of a cat").input_ids == expected
    assert tok("a photo of a cat").input_ids.tolist() == [expected]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (49406, 49407, 49407, 49408)
    assert tok.context_length == 77


def test_shipped_vocabulary_is_openais():
    vocab = json.loads((CLIP_BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    merges = (CLIP_BPE_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 49408 and list(vocab)[:2] == ["!", '"']
    assert list(vocab)[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert all(vocab[m.replace(" ", "")] == 512 + i for i, m in enumerate(merges[1:]))


def test_matches_hf_on_varied_strings(hf, tok):
    assert len(TEXTS) >= 1000
    assert_matches_hf(tok, hf)


def test_save_pretrained_round_trip(hf, tok, tmp_path):
    tok.save_pretrained(tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= written
    assert_matches_hf(Tokenizer.from_pretrained(tmp_path), hf)
    assert_matches_hf(tok, transformers.CLIPTokenizerFast.from_pretrained(tmp_path))  # transformers reads it too


def test_loads_folder_written_by_transformers(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
    assert_matches_hf(Tokenizer.from_pretrained(tmp_path), hf)


def test_special_tokens_read_from_config_files(tmp_path):
    """Some hub repositories (LAION's) pad with "!" (id 0); the token may be a serialised AddedToken."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_BPE_DIR / name, tmp_path / name)
    config = {"model_max_length": 1e30, "pad_token": "<|endoftext|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!", "__type": "AddedToken"}}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.pad_token_id == 0 and tok.context_length == 77
    texts = ["wow!! a cat!", "a"]
    ref = transformers.CLIPTokenizerFast.from_pretrained(tmp_path)
    assert ref.pad_token_id == 0
    ids, mask = hf_encode(ref, texts)
    enc = tok(texts)
    assert torch.equal(enc.input_ids, ids) and torch.equal(enc.attention_mask, mask)


def test_context_length(tok, tmp_path):
    Tokenizer.default(context_length=16).save_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).context_length == 16
    assert Tokenizer.from_pretrained(tmp_path, context_length=32).context_length == 32
    assert tok("a cat", padding="max_length").input_ids.shape == (1, 77)
    with pytest.raises(ValueError, match="padding"):
        tok("a cat", padding="longest_first")


def test_missing_files_name_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path.name}.*tokenizer.json.*vocab.json.*merges.txt"):
        Tokenizer.from_pretrained(tmp_path)


def test_truncation_warns_once_and_keeps_eos(hf, tok):
    texts = ["a cat " * 100, "short", "a dog " * 50]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = tok(texts)
    assert len(caught) == 1
    assert "2 of 3" in str(caught[0].message) and "'a cat a cat" in str(caught[0].message)
    assert enc.input_ids.shape == (3, 77) and enc.input_ids[[0, 2], -1].tolist() == [49407, 49407]
    assert torch.equal(enc.input_ids, hf_encode(hf, texts)[0])
    with pytest.raises(ValueError, match="2 of 3 captions are longer"):
        tok(texts, truncation=False)
    short = Tokenizer.default(context_length=5)
    with pytest.warns(UserWarning, match="context_length=5"):
        assert short("one two three four").input_ids.tolist() == [[49406, 637, 1237, 2097, 49407]]


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(TypeError, match=r"texts\[1\] is int 3, not a str"):
        tok(["a cat", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes b'a cat', not a str"):
        tok([b"a cat"])
    with pytest.raises(TypeError, match=r"texts is a mapping with the keys \['attention_mask', 'input_id'\], not captions"):
        tok({"input_id": [1], "attention_mask": [1]})
    assert tok("a cat").input_ids.shape == (1, 4)  # a str is a batch of one


def test_tokens_are_readable(tok):
    enc = tok(["Café au lait!", "a  cat"])
    shown = tok.tokens(enc.input_ids, enc.attention_mask)
    assert shown == [["<|startoftext|>", "café", "au", "la", "it", "!", "<|endoftext|>"],
                     ["<|startoftext|>", "a", "cat", "<|endoftext|>"]]
    assert tok.tokens(enc.input_ids)[1] == ["<|startoftext|>", "a", "cat"] + ["<|endoftext|>"] * 4  # padding kept
    assert tok.tokens([49406, 2368, 49407]) == [["<|startoftext|>", "cat", "<|endoftext|>"]]


def test_decode_matches_hf(hf, tok):
    for text in ["Café au lait, s'il vous plaît!", "東京タワー 🐱", "a  photo\tof A CAT"]:
        ids = tok(text).input_ids[0]
        assert tok.decode(ids) == hf.decode(ids.tolist(), skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids.tolist())


def test_encoding_is_a_mapping(tok):
    enc = tok(["a cat", "a dog on a mat"])
    assert isinstance(enc, Encoding) and enc["input_ids"] is enc.input_ids
    assert dict(**enc).keys() == {"input_ids", "attention_mask"}
    moved = enc.to("cpu")
    assert torch.equal(moved.attention_mask, enc.attention_mask) and moved.input_ids.dtype == torch.long
    with pytest.raises(KeyError):
        enc["pixel_values"]
