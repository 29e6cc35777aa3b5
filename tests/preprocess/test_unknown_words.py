"""Words a tokenizer's vocabulary does not hold are still tokenized (the demo's byte-level BPE spells them out
in pieces of a character or two; others map them to an unknown token) and scored: a warning names them,
pointing at the caller's line."""

import warnings

import pytest

import clipx
from clipx import shapes
from clipx.preprocess.bpe import Tokenizer


@pytest.fixture(scope="module")
def demo():
    return clipx.load("demo")


def test_the_demo_names_the_words_it_spells_out(demo):
    with pytest.warns(UserWarning) as record:
        enc = demo.tokenize(["a red circle", "a photo of a dog", "a café", "a dog"])
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message) == (
        "the tokenizer's vocabulary (590 tokens) does not hold 'photo', 'dog', 'café' (in 'a photo of a dog' and 2 "
        "more captions): the model has likely never seen them (spelled out in pieces of a character or two, or "
        "unknown)")
    shown = demo.tokenizer.tokens(enc.input_ids, enc.content_mask)[1]
    assert shown[2:7] == ["p", "h", "o", "t", "o"]  # what the warning is about: still tokenized, and scored


def test_explain_warns_at_the_users_line(demo):
    scene = shapes.scene(seed=3, n_objects=2)
    with pytest.warns(UserWarning, match=r"does not hold 'kitten' \(in 'a kitten'\)") as record:
        clipx.explain(demo, [scene.image], ["a kitten"], method="attention")
    assert record[0].filename == __file__


def test_many_unknown_words_are_listed_ten_at_most(demo):
    words = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "hazel", "ivy", "juniper", "kiwi", "lime"]
    with pytest.warns(UserWarning) as record:
        demo.tokenize([f"a {word}" for word in words] + ["a lime"])
    assert len(record) == 1
    message = str(record[0].message)
    assert ", ".join(map(repr, words[:10])) + " and 2 more (in 'a apple' and 12 more captions)" in message


def test_the_demos_own_captions_and_clips_vocabulary_do_not_warn(demo):
    """Every caption the demo trained on is held whole; CLIP's 49,408 tokens hold ordinary English."""
    captions = [*shapes.class_names(), "there is a red circle left of a blue star", "a picture with a green cross"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        demo.tokenize(captions)
        Tokenizer.default()(["a photo of a dog", "a photograph of two kittens on a sofa.", "2024", "!!!"])
    with pytest.warns(UserWarning, match="does not hold '一只猫'"):  # an English vocabulary, Chinese spelled out
        Tokenizer.default()("一只猫")


def test_a_word_that_became_the_unknown_token_is_named_but_the_token_typed_as_such_is_not():
    """A WordPiece or Unigram vocabulary maps what it lacks to its unknown token."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat"])}
    backend = Backend(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(backend, 16, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                    tokenizer_class="BertTokenizer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["a cat", "a [UNK] cat"])
    with pytest.warns(UserWarning, match=r"\(6 tokens\) does not hold 'dog' \(in 'a dog'\)"):
        enc = tok(["a cat", "a dog"])
    assert enc.input_ids[1].tolist() == [4, 1]
