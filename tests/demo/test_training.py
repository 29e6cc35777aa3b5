"""Training the demo model: the caption tokenizer, the model it builds, the objective,
reproducibility on a tiny configuration, saving, and the shipped demo model itself."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clipx
from clipx.demo import shapes, training
from clipx.eval import metrics
from clipx.preprocess.bpe import BOS, EOS, Tokenizer
from clipx.demo.training import (Architecture, Recipe, build_model, contrastive_loss, lr_factor, save, train,
                            train_tokenizer, true_of)

TINY = Architecture(image_size=32, patch_size=8, width=32, layers=1, heads=2, projection_dim=16)
TINY_RECIPE = Recipe(steps=50, batch=8, warmup=10, eval_every=25, eval_scenes=36)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def tiny_run():
    return train(TINY_RECIPE, TINY, progress=False)


def test_tokenizer_follows_clips_conventions(tokenizer, tmp_path):
    enc = tokenizer(["a red circle", "A RED  Circle", "an orange star left of a blue cross"])
    ids = enc.input_ids
    assert ids[0, 0] == tokenizer.bos_token_id and tokenizer.tokens(ids[0])[0][0] == BOS
    assert torch.equal(ids[0], ids[1])  # lowercase, whitespace collapsed
    assert tokenizer.tokens(ids[:1], enc.attention_mask[:1]) == [[BOS, "a", "red", "circle", EOS]]
    lengths = enc.attention_mask.sum(1)
    assert (ids[torch.arange(3), lengths - 1] == tokenizer.eos_token_id).all()  # EOS last
    assert (ids[0, lengths[0]:] == tokenizer.eos_token_id).all()  # padded with EOS
    assert tokenizer.eos_token_id == tokenizer.vocab_size - 1 and tokenizer.bos_token_id == tokenizer.vocab_size - 2
    vocab = tokenizer._backend.get_vocab()
    assert all(word + "</w>" in vocab for word in shapes.WORDS)  # every word of the grammar is one token
    with pytest.warns(UserWarning, match="does not hold 'zebra'"):  # and say so
        assert tokenizer(["a zebra"]).input_ids.shape[1] > 4  # unknown words fall back to byte symbols
    assert max(tokenizer(c).input_ids.shape[1] for c in shapes.all_captions()) <= tokenizer.context_length

    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert reloaded.context_length == tokenizer.context_length
    assert torch.equal(reloaded(["a red circle, a blue star and a green cross"]).input_ids,
                       tokenizer(["a red circle, a blue star and a green cross"]).input_ids)


def test_build_model_carries_the_tokenizers_ids(tokenizer):
    model = build_model(TINY, tokenizer, seed=0)
    text = model.config.text_config
    assert (text.vocab_size, text.eos_token_id, text.bos_token_id, text.pad_token_id) == \
        (tokenizer.vocab_size, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id)
    assert text.max_position_embeddings == TINY.context_length
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.vision.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(TINY.width ** -0.5, rel=0.2)
    assert torch.equal(build_model(TINY, tokenizer, seed=0).vision.proj.weight, model.vision.proj.weight)


def test_loss_leaves_true_captions_out_of_the_negatives():
    captions = ["a red circle", "a red circle and a blue star", "a green cross"]
    contents = torch.zeros(3, len(shapes.COLORS) * len(shapes.SHAPES))
    for i, pairs in enumerate([[("red", "circle")], [("red", "circle"), ("blue", "star")], [("green", "cross")]]):
        contents[i, [shapes.class_index(c, s) for c, s in pairs]] = 1
    true = true_of(contents, captions)
    assert true.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    logits = torch.randn(3, 3)
    changed = logits.clone()
    changed[1, 0] += 10  # image 1 holds a red circle: "a red circle" is no negative for it
    assert torch.equal(contrastive_loss(logits, true), contrastive_loss(changed, true))
    changed[0, 1] += 10  # image 0 has no blue star: that caption is a negative
    assert contrastive_loss(changed, true) > contrastive_loss(logits, true)


def test_lr_schedule():
    recipe = Recipe(steps=100, warmup=10)
    assert lr_factor(0, recipe) == pytest.approx(0.1) and lr_factor(9, recipe) == pytest.approx(1.0)
    assert lr_factor(55, recipe) == pytest.approx(0.5) and lr_factor(100, recipe) == pytest.approx(0.0)


def test_training_is_reproducible(tiny_run):
    again = train(TINY_RECIPE, TINY, progress=False)
    assert len(tiny_run.losses) == 50 and all(math.isfinite(x) for x in tiny_run.losses)
    assert again.losses == tiny_run.losses  # bit-identical
    assert [step for step, _ in tiny_run.history] == [25, 50]
    other = train(Recipe(steps=5, batch=8, warmup=2, eval_every=0, seed=1), TINY, progress=False)
    assert other.losses != tiny_run.losses[:5]


def test_saved_folder_loads_like_a_hub_checkpoint(tiny_run, tmp_path):
    scores = save(tiny_run, tmp_path, TINY_RECIPE, TINY, "python -m clipx.demo.training ...", threads=1)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "README.md"):
        assert (tmp_path / name).is_file(), name
    assert 0 <= scores["zero_shot_single_object"] <= 1 and 0 <= scores["two_object_retrieval"] <= 1
    assert f"{scores['zero_shot_single_object']:.3f}" in (tmp_path / "README.md").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["eos_token_id"] == \
        tiny_run.model.tokenizer.eos_token_id
    loaded = clipx.load(tmp_path)
    images = [shapes.scene(s, 1, size=TINY.image_size).image for s in range(3)]
    captions = ["a red circle", "a blue star left of a green cross"]
    expected = tiny_run.model(pixel_values=tiny_run.model.preprocess(images), **tiny_run.model.tokenize(captions))
    got = loaded(pixel_values=loaded.preprocess(images), **loaded.tokenize(captions))
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image)


def test_demo_model_meets_its_targets(monkeypatch):
    """The issue's bar for the shipped model, on the model card's held-out test (1,000 fresh scenes each)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = clipx.load("demo")
    assert model.config.vision_config.image_size == shapes.IMAGE_SIZE
    scores = training.evaluate(model, seed=0)
    assert scores["zero_shot_single_object"] >= 0.9  # among all 36 colour x shape captions; chance 1/36
    assert scores["two_object_retrieval"] >= 0.7


def test_demo_model_relevance_points_at_the_named_object(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = clipx.load("demo")
    generator = torch.Generator().manual_seed(0)
    hits, random_hits = [], []
    for k in range(60):
        scene = shapes.scene(10_000 + k, n_objects=2)  # fresh: not a dataset seed
        target = scene.objects[k % 2]
        exp = clipx.explain(model, [scene.image], [shapes.describe(target)], method="relevance", start_layer=0)
        hits.append(metrics.pointing_game(exp.image[0, 0], target.mask))
        random_hits.append(metrics.pointing_game(torch.rand(exp.image.shape[-2:], generator=generator), target.mask))
    assert sum(hits) / len(hits) >= 0.8  # benchmarks/shapes_eval.py: 0.93 on 200 scenes
    assert sum(random_hits) / len(random_hits) <= 0.3
